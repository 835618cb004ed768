"""``review SWAP_READY``: a local web server for looking at and fixing a swap-ready folder.

Why the standard library (http.server.ThreadingHTTPServer) and not Flask: the server has
one page, a dozen routes and one user; the stdlib needs no dependency, starts in
milliseconds, and keeps every check (token, Host, body size) in plain sight in this file.

Safety: bound to 127.0.0.1 only (never 0.0.0.0); a random token is part of the URL printed,
and every request for data, thumbnails or photos (``?token=``) and every POST (header
``X-Review-Token``) must carry it, so a page of another site or another local user cannot
read the library or post to it; the Host header must name 127.0.0.1 or localhost (no DNS
rebinding); an Origin header, when a browser sends one, must be this server's own (a page of
another site is refused even with the token); bodies are JSON objects of at most 1 MiB, a
body nested too deeply or not UTF-8 is a 400 like any malformed one. A photo is served only
as ``/noface/<sha256>``: one of the cache's photos without a face the page shows, while its
bytes still hash so (the request names a hash, never a path). The page never writes files:
every action calls a library function (steps/curate.py, steps/consolidate.py, the split of
the identity operations when present), each a recorded, undoable run, and index.html is
rewritten after.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import os
import re
import secrets
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..core import runs
from ..core.library import Library
from ..core.thresholds import ThresholdError, derived, resolve_with_source
from ..formats.manifest import (FACESET_NAME, SWAP_FACESET_MANIFEST, ManifestError,
                                load_manifest)
from ..formats.swapset import MANIFEST_NAME
from ..formats.report import (SHEET_FILE, THUMBS_DIR, mixed_suggestions, noface_model,
                              write_report)
from ..io.imageio import ImageError, decode, read_header
from ..steps import consolidate, curate

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"index.html", "app.js", "app.css"}
MAX_BODY = 1 << 20
HOST = "127.0.0.1"
TOKEN_HEADER = "X-Review-Token"
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_PHOTO = 200 << 20      # bytes: a photo without a face served whole (a camera's largest)
# formats a browser shows as they are; any other (TIFF, HEIF) is served re-encoded as JPEG
BROWSER_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
                 "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif"}


def _split_functions():
    """plan_split / apply_split of the identity operations, when that step is installed."""
    try:
        from ..steps import split as split_step   # noqa: PLC0415
    except ImportError:
        return None
    if hasattr(split_step, "plan_split") and hasattr(split_step, "apply_split"):
        return split_step
    return None


class ReviewState:
    """The folder under review: its model as JSON (cached until an action changes it), and
    the actions, one at a time."""

    def __init__(self, root: Path, meta: dict, group_threshold: float | None = None,
                 merge_threshold: float | None = None, log=print,
                 split_threshold: float | None = None):
        self.root = Path(root).resolve()
        self.meta = meta
        self.flags = (group_threshold, merge_threshold)
        self.split_threshold = split_threshold
        self.lock = threading.Lock()
        self.log = log
        self._json: bytes | None = None
        self._noface: dict[str, Path] = {}    # sha256 -> photo, the page's noface tiles
        runs.load_top(self.root)            # refuse a folder that is not an export

    # -- reading ---------------------------------------------------------------------------
    def _suggestions(self, cards: list[dict]) -> dict:
        try:
            group, _ = resolve_with_source("consolidate_group", self.meta, self.flags[0],
                                           derived("consolidate_group", self.meta))
            merge, _ = resolve_with_source("consolidate_merge", self.meta, self.flags[1],
                                           derived("consolidate_merge", self.meta))
            plan = consolidate.plan_consolidate(self.root, group, merge)
            merges = [{"members": g.members, "similarity": round(g.min_similarity, 3),
                       "confident": g.confident} for g in plan.groups]
            note = ""
        except ThresholdError as exc:
            merges, note = [], f"no merge suggestions: {exc}"
        return {"merge": merges, "mixed": mixed_suggestions(cards), "note": note}

    def _split_threshold(self) -> float | None:
        """The distance over which two faces' groups are taken for two people (``split``'s
        threshold); None when this model has none."""
        try:
            value, _ = resolve_with_source("split", self.meta, self.split_threshold,
                                           derived("split", self.meta))
        except ThresholdError:
            return None
        return float(value)

    def merge_preview(self, names: list[str]) -> dict:
        """What a merge of ``names`` would join, for the page to confirm: the facesets'
        lowest pairwise centroid similarity, and whether that distance is over the split
        threshold (likely different people). Changes nothing."""
        with self.lock:
            plan = consolidate.plan_merge(self.root, names)
            threshold = self._split_threshold()
        g = plan.groups[0]
        distance = 1.0 - g.min_similarity
        return {"members": g.members, "similarity": round(g.min_similarity, 3),
                "distance": round(distance, 3),
                "split_threshold": None if threshold is None else round(threshold, 3),
                "likely_different": threshold is not None and distance > threshold}

    def refresh(self) -> None:
        """Rewrite index.html and its sheets, and build the page's data from the same cards
        (call under ``self.lock``)."""
        model: list = []
        write_report(self.root, model=model)
        _, cards, head = model
        # the photos the page may link: the cache's no-face files it shows, by their hash
        self._noface = {t.sha256: t.photo for t in (head.get("noface") or {}).get("tiles", [])
                        if t.photo is not None and SHA256.fullmatch(t.sha256)}
        body = {"folder": self.root.name,
                "head": dict(head, noface=noface_model(head.get("noface"))),
                "cards": [self._card(c) for c in cards],
                "suggestions": self._suggestions(cards),
                "history": curate.history(self.root),
                "split": _split_functions() is not None}
        self._json = json.dumps(body, ensure_ascii=False).encode("utf-8")

    def model_json(self) -> bytes:
        with self.lock:
            if self._json is None:
                self.refresh()
            return self._json

    def noface_photo(self, sha256: str) -> tuple[bytes, str] | None:
        """(bytes, content type) of a photo without a face the page shows, by the hash the
        cache recorded; None when it is not one of them, is no longer a regular file of
        those bytes (changed, replaced) or is not an image. The request names only a hash:
        no part of it becomes a path."""
        with self.lock:
            if self._json is None:
                self.refresh()
            photo = self._noface.get(sha256)
        if photo is None:
            return None
        data = read_capped(photo, MAX_PHOTO)
        if data is None or hashlib.sha256(data).hexdigest() != sha256:
            return None
        return browser_image(data)

    @staticmethod
    def _card(c: dict) -> dict:
        return {"name": c["name"], "title": c["title"], "kept": c["kept"],
                "dropped": c["dropped"], "mapping": c["mapping"], "top_n": c.get("top_n"),
                "links": c["links"], "cohesion": c.get("cohesion"),
                "tiles": [{"file": t.file, "key": t.key, "rank": t.rank, "score": t.score,
                           "sheet": t.sheet, "x": t.x, "y": t.y, "label": t.label}
                          for t in c["tiles"]]}

    # -- actions ---------------------------------------------------------------------------
    def act(self, action: str, body: dict) -> dict:
        with self.lock:
            try:
                entry = self._dispatch(action, body)
            finally:
                self._json = None
                self.refresh()
        return {"ok": True, "run": entry.get("id") if isinstance(entry, dict) else None}

    def _dispatch(self, action: str, b: dict):
        root, log = self.root, self.log
        if action == "rename":
            return curate.rename(root, b.get("faceset"), b.get("name"), log=log)
        if action == "drop":
            return curate.drop_faces(root, b.get("faceset"), _files(b), log=log)
        if action == "move":
            return curate.move_face(root, b.get("faceset"), _files(b), b.get("into"), log=log)
        if action == "quarantine":
            return curate.quarantine(root, b.get("faceset"), log=log)
        if action == "undo":
            run_id = b.get("run")
            if run_id is not None and not isinstance(run_id, str):
                raise ValueError("run must be a run id")
            return curate.undo(root, run_id, log=log)
        if action == "merge":
            names = b.get("facesets")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("facesets must be a list of faceset names")
            with Library(root, log, indent="").open():
                return consolidate.apply_consolidate(consolidate.plan_merge(root, names), log)
        if action == "split":
            return self._split(b)
        raise LookupError(action)

    def _split(self, b: dict):
        """Selected faces: they become one new faceset and the others another (a partition);
        none selected: the tight re-cluster of ``split`` proposes the parts."""
        step = _split_functions()
        if step is None:
            raise ValueError("split is not available in this version (the identity "
                             "operations' split step is not installed)")
        faceset = b.get("faceset")
        if not isinstance(faceset, str):
            raise ValueError("faceset must be a faceset name")
        files = _files(b) if b.get("files") else None
        with Library(self.root, self.log, indent="").open():
            if files:
                m = load_manifest(self.root / faceset / MANIFEST_NAME, SWAP_FACESET_MANIFEST) \
                    if FACESET_NAME.fullmatch(faceset) else {"faces": []}
                rest = [f["file"] for f in sorted(m["faces"], key=lambda f: f["rank"])
                        if f["file"] not in set(files)]
                plan = step.plan_split(self.root, faceset, partition=[files, rest])
            else:
                threshold, _ = resolve_with_source("split", self.meta, self.split_threshold,
                                                   derived("split", self.meta))
                plan = step.plan_split(self.root, faceset, threshold)
            entry = step.apply_split(plan, log=self.log)
        if entry is None:
            raise ValueError(f"{faceset}: split found fewer than two parts; nothing changed")
        return entry


def browser_image(data: bytes) -> tuple[bytes, str] | None:
    """(bytes, content type) of a photo as a browser shows it: as it is in a format browsers
    show, else decoded and re-encoded as JPEG; None when it is not an image."""
    import cv2   # noqa: PLC0415
    try:
        fmt = read_header(data).format
        if fmt in BROWSER_TYPES:
            return data, BROWSER_TYPES[fmt]
        ok, buf = cv2.imencode(".jpg", decode(data), [cv2.IMWRITE_JPEG_QUALITY, 90])
    except (ImageError, ValueError, OSError, cv2.error):
        return None
    return (buf.tobytes(), "image/jpeg") if ok else None


def read_capped(path: Path, cap: int) -> bytes | None:
    """A regular file's bytes, at most ``cap`` (None for anything else: gone, a folder, a
    FIFO, which O_NONBLOCK keeps from hanging the open, or larger than the cap)."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
                return None
            data = f.read(cap + 1)
    except OSError:
        return None
    return data if len(data) <= cap else None


def _files(b: dict) -> list[str]:
    files = b.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError("files must be a list of faces/NNN.png")
    return files


def _json_body(data: bytes) -> dict:
    """A POST body: a JSON object (ValueError, a 400, for anything else)."""
    try:
        body = json.loads(data or b"{}")
    except RecursionError:
        raise ValueError("the body is nested too deeply") from None
    except ValueError as exc:   # not JSON, not UTF-8
        raise ValueError(f"the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def make_handler(lib: ReviewState, token: str, port_ref: list):
    class Handler(BaseHTTPRequestHandler):
        server_version = "face-sets-review"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):      # quiet: the terminal shows actions only
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json",
                  cache: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "private, max-age=86400" if cache else "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; img-src 'self'; style-src 'self'; "
                             "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, json.dumps({"ok": False, "error": msg}).encode())

        def _host_ok(self) -> bool:
            host = (self.headers.get("Host") or "").lower()
            return host in {f"127.0.0.1:{port_ref[0]}", f"localhost:{port_ref[0]}"}

        def _origin_ok(self) -> bool:
            """No Origin (curl, the page's own GETs) or this server's own."""
            origin = self.headers.get("Origin")
            return origin is None or origin.lower() in {
                f"http://127.0.0.1:{port_ref[0]}", f"http://localhost:{port_ref[0]}"}

        def _token_ok(self, given: str | None) -> bool:
            return isinstance(given, str) and hmac.compare_digest(given.encode(),
                                                                  token.encode())

        def do_GET(self):  # noqa: N802
            url = urlsplit(self.path)
            if not self._host_ok():
                return self._error(421, "wrong Host")
            if not self._origin_ok():
                return self._error(403, "foreign Origin")
            query = parse_qs(url.query)
            path = url.path
            if path == "/favicon.ico":      # browsers ask unasked; no icon, nothing else said
                return self._send(204, b"", "image/x-icon", cache=True)
            if path == "/":
                path = "/static/index.html"
            if path.startswith("/static/"):
                name = path[len("/static/"):]
                if name not in STATIC_FILES:
                    return self._error(404, "not found")
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                return self._send(200, (STATIC / name).read_bytes(), ctype)
            if not self._token_ok((query.get("token") or [None])[0]):
                return self._error(403, "missing or wrong token")
            if path == "/api/library":
                return self._send(200, lib.model_json())
            if path == "/api/merge-preview":
                try:    # a centroid of zeros would give NaN: refused, never sent
                    preview = json.dumps(lib.merge_preview(query.get("faceset") or []),
                                         allow_nan=False)
                except (ValueError, ManifestError) as exc:
                    return self._error(400, str(exc))
                return self._send(200, preview.encode())
            if path.startswith("/thumbs/"):
                name = path[len("/thumbs/"):]
                f = lib.root / THUMBS_DIR / name
                if not SHEET_FILE.fullmatch(name) or not f.is_file():
                    return self._error(404, "no such thumbnail")
                return self._send(200, f.read_bytes(), "image/jpeg", cache=True)
            if path.startswith("/noface/"):
                sha = path[len("/noface/"):]
                found = lib.noface_photo(sha) if SHA256.fullmatch(sha) else None
                if found is None:
                    return self._error(404, "no such photo without a face")
                return self._send(200, *found)
            return self._error(404, "not found")

        def do_POST(self):  # noqa: N802
            url = urlsplit(self.path)
            if not self._host_ok():
                return self._error(421, "wrong Host")
            if not self._origin_ok():
                return self._error(403, "foreign Origin")
            if not self._token_ok(self.headers.get(TOKEN_HEADER)):
                return self._error(403, "missing or wrong token")
            if not url.path.startswith("/api/"):
                return self._error(404, "not found")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                return self._error(413, "body too large")
            try:
                body = _json_body(self.rfile.read(length))
                result = lib.act(url.path[len("/api/"):], body)
            except LookupError:
                return self._error(404, "no such action")
            except (ManifestError, ThresholdError, ValueError, FileNotFoundError,
                    FileExistsError, OSError) as exc:
                return self._error(400, str(exc))
            return self._send(200, json.dumps(result).encode())

    return Handler


def serve(root: str | Path, meta: dict, port: int = 0, group_threshold: float | None = None,
          merge_threshold: float | None = None, log=print, token: str | None = None,
          split_threshold: float | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Start the server (not yet serving: call ``serve_forever``); returns it and its URL."""
    lib = ReviewState(Path(root), meta, group_threshold, merge_threshold, log, split_threshold)
    lib.model_json()                        # index.html, every sheet and the data, fresh
    token = token or secrets.token_urlsafe(24)
    port_ref = [port]
    httpd = ThreadingHTTPServer((HOST, port), make_handler(lib, token, port_ref))
    httpd.daemon_threads = True
    port_ref[0] = httpd.server_address[1]
    return httpd, f"http://{HOST}:{port_ref[0]}/?token={token}"
