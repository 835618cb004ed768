"""A small Immich server for the tests and bench/bench_immich.py: stdlib http.server in a
thread on 127.0.0.1, speaking the endpoints `immich stage` uses, over real photo bytes.

Assets are served from ``FakeAsset`` records: the original's bytes, its size, and face boxes
given in the ORIGINAL's pixels that the server reports, as Immich does, in the pixels of a
smaller preview (``preview_scale``), so a client that forgets to scale back sees faces too
small. Behaviours the tests switch on: ``ignore_size`` (pages of ``page_cap`` whatever the
request says, and the last page repeated forever with a nextPage, as Immich 3.1 can do),
``fail_next`` (the next N requests answer 503), ``die_after_originals`` (after that many
originals the server drops every request and stops listening), ``latency_s`` per request.
``served`` counts the 200 answers per (endpoint, asset id); ``requests`` every request;
``seen`` records (method, path, headers) of every request (a second server that must never
see the key).

Hostile behaviours: ``redirects`` ({kind: (status, base URL)}: answer requests of that kind
-- "search", "faces", "original", "version", "people" -- with a redirect to the same path
on ``base``, once), ``trickle`` ({asset id: seconds between bytes} of that original),
``endless`` (asset ids whose original is an endless body without a length), ``silent`` (no
answer at all, the connection held open), ``raw_faces`` ({asset id: the face list sent as
is}, NaN and Infinity included), ``people_pages_forever``.
"""
from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KEY = "test-key-Zq8vX1c7-immich-secret"


@dataclass
class FakeAsset:
    id: str
    original_path: str
    data: bytes
    width: int
    height: int
    faces: list[tuple[float, float, float, float]] = field(default_factory=list)  # original px
    archived: bool = False

    def json(self) -> dict:
        return {"id": self.id, "type": "IMAGE", "originalPath": self.original_path,
                "originalFileName": self.original_path.rsplit("/", 1)[-1],
                "width": self.width, "height": self.height,
                "fileModifiedAt": "2024-05-01T10:00:00.000Z",
                "exifInfo": {"exifImageWidth": self.width, "exifImageHeight": self.height,
                             "fileSizeInByte": len(self.data)},
                "visibility": "archive" if self.archived else "timeline"}


class FakeImmich:
    def __init__(self, assets: list[FakeAsset], key: str = KEY, preview_scale: float = 0.5,
                 ignore_size: bool = False, page_cap: int = 3, latency_s: float = 0.0):
        self.assets = assets
        self.by_id = {a.id: a for a in assets}
        self.key = key
        self.preview_scale = preview_scale
        self.ignore_size, self.page_cap = ignore_size, page_cap
        self.latency_s = latency_s
        self.fail_next = 0
        self.die_after_originals: int | None = None
        self.forbid_originals = False          # 403 on downloads (a key without the right)
        self.dead = False
        self.lock = threading.Lock()
        self.served: Counter = Counter()
        self.requests = 0
        self.search_bodies: list[dict] = []
        self.seen: list[tuple[str, str, dict]] = []
        self.redirects: dict[str, tuple[int, str]] = {}
        self.trickle: dict[str, float] = {}
        self.endless: set[str] = set()
        self.silent = False
        self.raw_faces: dict[str, list] = {}
        self.people_pages_forever = False        # every people page claims a next one
        self.stopped = threading.Event()
        self.people: dict[str, str] = {}        # person id -> name
        self.face_person: dict[str, str] = {}   # face id -> person id
        self.major = 1
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeImmich":
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self.dead = False
        self.stopped.clear()
        self.httpd = _Server(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.dead = True
        self.stopped.set()                          # silent and streaming answers end
        if self.httpd is not None:
            httpd, self.httpd = self.httpd, None
            httpd.shutdown()
            httpd.server_close()

    def die(self) -> None:
        """Stop answering: requests on open connections are dropped, the port closed."""
        self.dead = True
        threading.Thread(target=self.stop, daemon=True).start()

    # ---- answers ---------------------------------------------------------------------------
    def page(self, body: dict) -> dict:
        vis = body.get("visibility")
        pool = [a for a in self.assets if a.archived == (vis == "archive")]
        if vis not in (None, "archive", "timeline"):
            pool = []
        size = self.page_cap if self.ignore_size else int(body.get("size", 250))
        page = max(1, int(body.get("page", 1)))
        last = max(1, -(-len(pool) // size))
        if self.ignore_size:
            page = min(page, last)   # past the end: the last page again, with a nextPage
            nxt = str(page + 1)
        else:
            nxt = str(page + 1) if page < last else None
        items = pool[(page - 1) * size: page * size]
        return {"assets": {"total": len(items), "count": len(items),
                           "items": [a.json() for a in items], "nextPage": nxt,
                           "facets": []}}

    def faces(self, asset: FakeAsset) -> list[dict]:
        if asset.id in self.raw_faces:
            return self.raw_faces[asset.id]
        s = self.preview_scale
        pw, ph = round(asset.width * s), round(asset.height * s)
        return [{"id": f"{asset.id}-f{i}", "imageWidth": pw, "imageHeight": ph,
                 "boundingBoxX1": round(x1 * s), "boundingBoxY1": round(y1 * s),
                 "boundingBoxX2": round(x2 * s), "boundingBoxY2": round(y2 * s),
                 "person": ({"id": self.face_person[f"{asset.id}-f{i}"]}
                            if f"{asset.id}-f{i}" in self.face_person else None),
                 "sourceType": "machine-learning"}
                for i, (x1, y1, x2, y2) in enumerate(asset.faces)]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer (a deadline, a size cap) is expected here."""
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeImmich
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode())

    def _stream(self, asset: FakeAsset) -> None:
        """A trickled original (one byte per interval) or an endless one (no length)."""
        fake = self.server_fake
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if asset.id in fake.endless:
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(asset.data)))
        self.end_headers()
        self.close_connection = True
        try:
            if asset.id in fake.endless:
                block = asset.data * 4
                while not fake.stopped.is_set():
                    self.wfile.write(block)
            else:
                for i in range(len(asset.data)):
                    if fake.stopped.wait(fake.trickle[asset.id]):
                        return
                    self.wfile.write(asset.data[i:i + 1])
                    self.wfile.flush()
        except OSError:                                # the client hung up
            pass

    def _kind(self, method: str, path: str) -> str:
        parts = path.split("/")
        if path == "/api/search/metadata":
            return "search"
        if path.startswith("/api/faces"):
            return "faces"
        if len(parts) == 5 and parts[:3] == ["", "api", "assets"] and parts[4] == "original":
            return "original"
        return path.rsplit("/", 1)[-1]

    def _handle(self, method: str) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with fake.lock:
            fake.seen.append((method, self.path, dict(self.headers)))
        if fake.silent:
            self.close_connection = True
            fake.stopped.wait()                     # never a byte back
            return
        if fake.dead:
            self.close_connection = True
            return                                  # no answer: the client sees a drop
        url = urlsplit(self.path)
        redirect = fake.redirects.get(self._kind(method, url.path))
        if redirect and "redirected=1" not in url.query:
            code, base = redirect
            self.send_response(code)
            self.send_header("Location", base + self.path + ("&" if url.query else "?")
                             + "redirected=1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fake.latency_s:
            time.sleep(fake.latency_s)
        with fake.lock:
            fake.requests += 1
            failing = fake.fail_next > 0
            if failing:
                fake.fail_next -= 1
        if url.path == "/api/server/ping":
            return self._json(200, {"res": "pong"})
        if failing:
            return self._json(503, {"message": "Service Unavailable"})
        if self.headers.get("x-api-key") != fake.key:
            return self._json(401, {"message": "Invalid API key", "statusCode": 401})
        if url.path == "/api/server/version":
            return self._json(200, {"major": fake.major, "minor": 120, "patch": 0})
        if method == "GET" and url.path == "/api/people":
            return self._json(200, {"people": [{"id": k, "name": v}
                                               for k, v in fake.people.items()],
                                    "total": len(fake.people),
                                    "hasNextPage": fake.people_pages_forever})
        if method == "POST" and url.path == "/api/people":
            with fake.lock:
                pid = f"p{len(fake.people):04d}"
                fake.people[pid] = json.loads(raw or b"{}").get("name", "")
            return self._json(201, {"id": pid, "name": fake.people[pid]})
        if method == "PUT" and url.path.startswith("/api/faces/"):
            person = json.loads(raw or b"{}").get("id")
            if person not in fake.people:
                return self._json(400, {"message": "no such person"})
            with fake.lock:
                fake.face_person[url.path.rsplit("/", 1)[1]] = person
            return self._json(200, {"id": person})
        if method == "POST" and url.path == "/api/search/metadata":
            body = json.loads(raw or b"{}")
            fake.search_bodies.append(body)
            return self._json(200, fake.page(body))
        if method == "GET" and url.path == "/api/faces":
            asset = fake.by_id.get((parse_qs(url.query).get("id") or [""])[0])
            if asset is None:
                return self._json(400, {"message": "Not found or no asset.read access"})
            with fake.lock:
                fake.served["faces", asset.id] += 1
            return self._json(200, fake.faces(asset))
        parts = url.path.split("/")
        if method == "GET" and len(parts) == 5 and parts[:3] == ["", "api", "assets"] \
                and parts[4] == "original":
            asset = fake.by_id.get(parts[3])
            if asset is None:
                return self._json(400, {"message": "Not found"})
            if fake.forbid_originals:
                return self._json(403, {"message": "Missing required permission: "
                                                   "asset.download"})
            with fake.lock:
                fake.served["original", asset.id] += 1
                n = sum(v for (kind, _), v in fake.served.items() if kind == "original")
            if asset.id in fake.trickle or asset.id in fake.endless:
                return self._stream(asset)
            self._send(200, asset.data, "image/jpeg")
            if fake.die_after_originals is not None and n >= fake.die_after_originals:
                fake.die()
            return
        return self._json(404, {"message": f"Cannot {method} {url.path}"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


def small_jpeg(seed: int, size: int = 96) -> bytes:
    """A small distinct JPEG (the benchmark's fake library)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=70)
    return buf.getvalue()
