"""An Immich server as a photo source: a small HTTP client and ``ImmichSource``.

The client speaks the few endpoints face-sets needs (Immich 1.1xx to 3.x):

``POST /api/search/metadata``  one page of assets: ``{"type": "IMAGE", "page": N, "size":
    250, "withExif": true[, "visibility": ...]}`` answers ``{"assets": {"items": [...],
    "nextPage": "2" | null}}``. Paging also stops on an empty page or a page whose ids were
    all seen already (a server that ignores ``size`` can hand out one page forever).
``GET /api/faces?id=ASSET_ID``  Immich's own face boxes of an asset (``boundingBoxX1..Y2`` in
    ``imageWidth x imageHeight`` pixels of the preview they were detected on).
``GET /api/assets/{id}/original``  the original file, streamed.
``GET /api/server/ping``  ``{"res": "pong"}``: the breaker's probe.
``GET /api/server/version``  ``{"major", "minor", "patch"}``.

Every answer is untrusted. Redirects are followed only within IMMICH_URL's origin (scheme,
host, port): the key rides in a custom header that ``requests`` would re-send to any host a
``Location`` names, so a redirect elsewhere is refused (``RedirectRefused``, naming where it
pointed). Each request has an overall ``deadline`` (connect, answer, body and retries
together; a trickling server cannot hold a worker longer) besides the socket timeouts, and
every body a size cap: ``max_original`` bytes for an original, ``JSON_MAX_BYTES`` for a JSON
answer. Face boxes and sizes that are not finite, in-range numbers are dropped where they are
read (``faces``, ``asset_dims``), so no NaN or infinity gets further.

The API key comes only from the environment (``IMMICH_API_KEY``) and travels only in the
``x-api-key`` header: no message, log or file of face-sets ever holds it (errors name the
server and the endpoint, never the headers). Each thread has its own ``requests.Session``
(sessions are not thread-safe); transient failures (connection errors, timeouts, 5xx, 429)
are retried with backoff, and every failed attempt feeds the ``Breaker``: after
``threshold`` consecutive failures it probes ``/api/server/ping`` and, when the server does not
answer, raises ``ServerDown`` so the caller can save its state and stop.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Iterator
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3

from .base import PhotoSource, SourceItem

ENV_URL = "IMMICH_URL"
ENV_KEY = "IMMICH_API_KEY"
PAGE_SIZE = 250
BREAKER_THRESHOLD = 12          # consecutive failed requests before the ping probe
RETRIES = 3                     # extra attempts of one request on a transient failure
BACKOFF_S = 0.25                # first retry delay (doubles)
TIMEOUT_S = (10.0, 60.0)        # connect, read (the longest silence between two bytes)
DEADLINE_S = 300.0              # the most one request may take, retries and body included
MAX_ORIGINAL_MB = 200.0         # the largest original downloaded (--max-original-mb)
JSON_MAX_BYTES = 64 << 20       # the largest JSON answer read (a page of 250 assets: ~1 MB)
MAX_REDIRECTS = 5               # redirects followed within the server's own origin
MAX_PIXELS_EDGE = 1_000_000     # a width, height or box coordinate beyond this is junk
CHUNK = 1 << 20
# the permission each endpoint needs (a 403 names it)
PERMISSIONS = {"/api/search/metadata": "asset.read", "/api/faces": "face.read",
               "/api/faces/{id}": "face.update", "/api/people": "person.read",
               "/api/people (create)": "person.create",
               "/api/assets/original": "asset.download", "/api/server/ping": "server.about",
               "/api/server/version": "server.about"}
VISIBILITY_TIMELINE = "timeline"
VISIBILITY_ARCHIVE = "archive"
SUPPORTED_MAJORS = (1, 2, 3)


class ImmichError(RuntimeError):
    """A failure talking to Immich, as one line (never holding the key)."""


class ImmichRefused(ImmichError):
    """Retrying cannot help (the key, or where the server sends us): the run stops."""


class ImmichAuthError(ImmichRefused):
    """401 or 403."""


class RedirectRefused(ImmichRefused):
    """The server redirected a request to another origin (the key would follow it)."""


class ServerDown(ImmichError):
    """The breaker tripped and the probe found the server gone."""


class RequestFailed(ImmichError):
    """One request failed after its retries (the server still answers pings)."""


class TooLarge(RequestFailed):
    """An answer over its size cap (not retried: it would be as large again)."""


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what a key is bound
    to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1                # unparsable: matches no configured origin
    return scheme, (parts.hostname or "").lower(), \
        port if port is not None else {"http": 80, "https": 443}.get(scheme)


def public_url(url: str) -> str:
    """The server URL without any user:password part and trailing slash (safe to print)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def api_base(url: str) -> str:
    """The base the endpoints hang off: IMMICH_URL with or without its trailing ``/api``."""
    base = url.strip().rstrip("/")
    return base[:-4] if base.endswith("/api") else base


def settings_from_env(env=os.environ) -> tuple[str, str]:
    """(url, key) from IMMICH_URL and IMMICH_API_KEY; a one-line error naming what is missing."""
    url, key = env.get(ENV_URL, "").strip(), env.get(ENV_KEY, "").strip()
    missing = [n for n, v in ((ENV_URL, url), (ENV_KEY, key)) if not v]
    if missing:
        raise ImmichError(f"set {' and '.join(missing)} in the environment (the API key is "
                          "read only from there, never from the command line)")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ImmichError(f"{ENV_URL} must start with http:// or https:// (got "
                          f"{public_url(url)!r})")
    return url, key


class Breaker:
    """Counts consecutive failed requests across threads; at ``threshold`` it probes."""

    def __init__(self, probe, threshold: int = BREAKER_THRESHOLD):
        self.probe, self.threshold = probe, threshold
        self.lock = threading.Lock()
        self.failures = 0
        self.tripped = False
        self.probes = 0

    def success(self) -> None:
        with self.lock:
            self.failures = 0

    def failure(self) -> None:
        """Record a failure; raises ServerDown when the count trips and the probe fails."""
        with self.lock:
            if self.tripped:
                raise ServerDown("server down")
            self.failures += 1
            if self.failures < self.threshold:
                return
            self.probes += 1
            if self.probe():
                self.failures = 0
                return
            self.tripped = True
            raise ServerDown("server down")


class ImmichClient:
    """The endpoints above over one server, safe to share between threads."""

    def __init__(self, url: str, key: str, retries: int = RETRIES, backoff: float = BACKOFF_S,
                 timeout=TIMEOUT_S, breaker_threshold: int = BREAKER_THRESHOLD,
                 deadline: float = DEADLINE_S, max_original_mb: float = MAX_ORIGINAL_MB):
        if not (deadline > 0 and math.isfinite(deadline)):
            raise ValueError(f"--deadline {deadline}: give a positive number of seconds")
        if not (max_original_mb > 0 and math.isfinite(max_original_mb)):
            raise ValueError(f"--max-original-mb {max_original_mb}: give a positive size")
        self.base = api_base(url)
        self.server = public_url(url)
        self.origin = origin(self.base)
        self._key = key
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.deadline = float(deadline)
        self.max_original = int(max_original_mb * 1e6)
        self._local = threading.local()
        self.breaker = Breaker(self.ping, breaker_threshold)
        self.requests = 0
        self._count_lock = threading.Lock()

    @classmethod
    def from_env(cls, **kw) -> "ImmichClient":
        return cls(*settings_from_env(), **kw)

    def __repr__(self) -> str:   # never the key
        return f"ImmichClient({self.server!r})"

    # ---- plumbing --------------------------------------------------------------------------
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers.update({"x-api-key": self._key, "Accept": "application/json",
                              "User-Agent": "face-sets"})
            self._local.session = s
        return s

    def _auth_error(self, status: int, endpoint: str) -> ImmichAuthError:
        if status == 401:
            return ImmichAuthError(f"{self.server}: 401 Unauthorized: the API key in "
                                   f"{ENV_KEY} is wrong or expired; create a new one in "
                                   "Immich (Account Settings > API Keys)")
        perm = PERMISSIONS.get(endpoint, "?")
        return ImmichAuthError(f"{self.server}: 403 Forbidden on {endpoint}: the API key in "
                               f"{ENV_KEY} lacks the permission {perm} (face-sets needs "
                               "asset.read, face.read and asset.download)")

    def _send(self, method: str, url: str, t_end: float, endpoint: str,
              **kw) -> requests.Response:
        """One attempt; redirects followed by hand, and only within the server's origin."""
        kw.pop("stream", None)
        for _ in range(MAX_REDIRECTS + 1):
            left = t_end - time.monotonic()
            if left <= 0:
                raise _DeadlinePassed()
            # always streamed: no body is read before its cap and deadline apply
            resp = self.session().request(method, url, allow_redirects=False, stream=True,
                                          timeout=(min(self.timeout[0], left),
                                                   min(self.timeout[1], left)), **kw)
            if not resp.is_redirect:
                return resp
            target = urljoin(url, resp.headers.get("Location", ""))
            status = resp.status_code
            resp.close()
            if origin(target) != self.origin:
                raise RedirectRefused(
                    f"{self.server}: {method} {endpoint}: the server redirected ({status}) to "
                    f"{public_url(target)}, another origin; the API key goes only to "
                    f"{self.server}, so face-sets did not follow (set {ENV_URL} to the "
                    "address Immich answers on itself)")
            if status == 303 or (status in (301, 302) and method == "POST"):
                method = "GET"                   # as browsers and requests do
                kw.pop("json", None)
                kw.pop("data", None)
            url = target
        raise RequestFailed(f"{self.server}: {method} {endpoint}: more than {MAX_REDIRECTS} "
                            "redirects")

    def _deadline_error(self, method: str, endpoint: str) -> RequestFailed:
        return RequestFailed(f"{self.server}: {method} {endpoint}: no complete answer within "
                             f"the deadline of {self.deadline:g} s (--deadline)")

    def request(self, method: str, path: str, endpoint: str | None = None,
                breaker: bool = True, t_end: float | None = None,
                **kw) -> requests.Response:
        """One request with retries on transient failures; a response with a 2xx status.

        401/403 and redirects to another origin raise (ImmichRefused) at once; other failures
        after the retries, or once the deadline ``t_end`` (time.monotonic; default now +
        ``deadline``) has passed, raise RequestFailed (or ServerDown when the breaker trips).
        Messages name the endpoint only.
        """
        endpoint = endpoint or path
        t_end = time.monotonic() + self.deadline if t_end is None else t_end
        delay = self.backoff
        last, late = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                if time.monotonic() + delay >= t_end:
                    late = True                  # no time left for another attempt
                    break
                time.sleep(delay)
                delay *= 2
            with self._count_lock:
                self.requests += 1
            try:
                resp = self._send(method, self.base + path, t_end, endpoint, **kw)
            except _DeadlinePassed:
                late = True
                break
            except requests.RequestException as exc:
                last = type(exc).__name__
            else:
                if resp.status_code in (401, 403):
                    resp.close()
                    raise self._auth_error(resp.status_code, endpoint)
                if 200 <= resp.status_code < 300:
                    if breaker:
                        self.breaker.success()
                    return resp
                last = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("Retry-After")
                resp.close()
                if resp.status_code not in (408, 425, 429) and resp.status_code < 500:
                    if breaker:
                        self.breaker.failure()
                    raise RequestFailed(f"{self.server}: {method} {endpoint}: {last}")
                if retry_after:
                    delay = max(delay, _retry_after_s(retry_after))
            if breaker:
                self.breaker.failure()
        if late or time.monotonic() >= t_end:
            raise self._deadline_error(method, endpoint)
        raise RequestFailed(f"{self.server}: {method} {endpoint}: {last} after "
                            f"{self.retries + 1} attempts")

    def _read_body(self, resp: requests.Response, write, cap: int, t_end: float,
                   method: str, endpoint: str, what: str) -> int:
        """Stream ``resp``'s body into ``write`` until its end, the size cap or the deadline
        (checked after every read; each read waits at most until the deadline). Bytes
        read; TooLarge over ``cap``; RequestFailed past the deadline; requests'
        ConnectionError when the body is cut off."""
        declared = resp.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > cap:
            raise TooLarge(f"{self.server}: {method} {endpoint}: {what} of {int(declared)} "
                           f"bytes is larger than the cap of {cap} bytes")
        raw, size = resp.raw, 0
        while True:
            left = t_end - time.monotonic()
            if left <= 0:
                raise self._deadline_error(method, endpoint)
            _set_read_timeout(resp, min(self.timeout[1], left))
            try:
                chunk = raw.read1(CHUNK, decode_content=True)
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
                if time.monotonic() >= t_end:
                    raise self._deadline_error(method, endpoint) from None
                raise requests.ConnectionError("read timed out") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise requests.ConnectionError(type(exc).__name__) from None
            if not chunk:
                return size
            size += len(chunk)
            if size > cap:
                raise TooLarge(f"{self.server}: {method} {endpoint}: {what} is larger than "
                               f"the cap of {cap} bytes")
            write(chunk)

    def _read_all(self, resp: requests.Response, cap: int, t_end: float, method: str,
                  endpoint: str, what: str) -> bytes:
        """The whole body of ``resp`` (closed after): TooLarge over ``cap``, RequestFailed
        when it is cut off or misses the deadline."""
        body = bytearray()
        try:
            self._read_body(resp, body.extend, cap, t_end, method, endpoint, what)
        except requests.RequestException as exc:
            raise RequestFailed(f"{self.server}: {method} {endpoint}: {type(exc).__name__} "
                                f"while reading {what}") from None
        finally:
            resp.close()
        return bytes(body)

    def json(self, method: str, path: str, endpoint: str | None = None, **kw):
        endpoint = endpoint or path
        t_end = time.monotonic() + self.deadline
        resp = self.request(method, path, endpoint, t_end=t_end, **kw)
        try:
            body = self._read_all(resp, JSON_MAX_BYTES, t_end, method, endpoint, "the answer")
        except TooLarge:
            raise
        except RequestFailed:                    # cut off or late: the server's failure
            self.breaker.failure()
            raise
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise RequestFailed(f"{self.server}: {method} {endpoint}: the answer is "
                                "not JSON (is IMMICH_URL the Immich server?)") from None

    # ---- endpoints -------------------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the server answers ``/api/server/ping`` (one attempt, no breaker)."""
        endpoint = "/api/server/ping"
        t_end = time.monotonic() + min(10.0, self.deadline)
        try:
            resp = self._send("GET", self.base + endpoint, t_end, endpoint)
            data = json.loads(self._read_all(resp, 4096, t_end, "GET", endpoint, "the answer"))
            return resp.status_code == 200 and isinstance(data, dict) \
                and data.get("res") == "pong"
        except (requests.RequestException, ValueError, RecursionError, ImmichError,
                _DeadlinePassed):
            return False

    def version(self) -> tuple[int, int, int]:
        v = self.json("GET", "/api/server/version")
        try:
            return int(v["major"]), int(v["minor"]), int(v["patch"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise RequestFailed(f"{self.server}: /api/server/version: unexpected answer") \
                from None

    def search_page(self, page: int, size: int = PAGE_SIZE,
                    visibility: str | None = None) -> tuple[list[dict], str | None]:
        body = {"type": "IMAGE", "page": page, "size": size, "withExif": True}
        if visibility:
            body["visibility"] = visibility
        data = self.json("POST", "/api/search/metadata", json=body)
        assets = data.get("assets") if isinstance(data, dict) else None
        items = assets.get("items") if isinstance(assets, dict) else None
        if not isinstance(items, list):
            raise RequestFailed(f"{self.server}: /api/search/metadata: no assets.items in "
                                "the answer")
        nxt = assets.get("nextPage")
        # an id goes into URLs and file names: one that is not a plain id is left out
        return [a for a in items if isinstance(a, dict) and isinstance(a.get("id"), str)
                and _SAFE_ID.fullmatch(a["id"])], \
            (str(nxt) if nxt not in (None, "") else None)

    def iter_assets(self, visibilities: tuple[str | None, ...] = (None,),
                    size: int = PAGE_SIZE) -> Iterator[dict]:
        """Every IMAGE asset once, page by page, for each visibility asked."""
        seen: set[str] = set()
        for vis in visibilities:
            page: int | None = 1
            while page is not None:
                items, nxt = self.search_page(page, size, vis)
                fresh = [a for a in items if a["id"] not in seen]
                if not fresh:   # an empty page, or one repeating ids already seen: stop
                    break
                for a in fresh:
                    seen.add(a["id"])
                    yield a
                try:
                    page = int(nxt) if nxt is not None else None
                except ValueError:
                    page = None
                if page is not None and page <= 0:
                    page = None

    def faces(self, asset_id: str) -> list[dict]:
        data = self.json("GET", "/api/faces", params={"id": asset_id})
        if not isinstance(data, list):
            raise RequestFailed(f"{self.server}: /api/faces: the answer is not a list")
        return [f for f in data if isinstance(f, dict) and face_box(f) is not None]

    def download_original(self, asset_id: str, dest: str) -> tuple[int, str]:
        """Stream the original into ``dest`` (a temp path); (size, sha256). TooLarge over
        ``max_original`` bytes; RequestFailed past the deadline (one for the whole download,
        its retries included)."""
        try:
            return self._download(asset_id, dest)
        except BaseException:
            with contextlib.suppress(OSError):     # no partial file outlives a failure
                os.unlink(dest)
            raise

    def _download(self, asset_id: str, dest: str) -> tuple[int, str]:
        method, endpoint = "GET", "/api/assets/original"
        t_end = time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            resp = self.request(method, f"/api/assets/{asset_id}/original", endpoint,
                                t_end=t_end)
            h = hashlib.sha256()
            try:
                with open(dest, "wb") as fh:
                    def write(chunk: bytes) -> None:
                        fh.write(chunk)
                        h.update(chunk)

                    size = self._read_body(resp, write, self.max_original, t_end, method,
                                           endpoint, "the original")
                    fh.flush()
                    os.fsync(fh.fileno())
                self.breaker.success()
                return size, h.hexdigest()
            except TooLarge as exc:
                raise TooLarge(f"{exc} (--max-original-mb {self.max_original / 1e6:g})") \
                    from None
            except RequestFailed:                       # the deadline passed mid-body
                self.breaker.failure()
                raise
            except requests.RequestException as exc:   # cut off mid-body
                self.breaker.failure()
                if attempt == self.retries or time.monotonic() >= t_end:
                    raise RequestFailed(f"{self.server}: GET /api/assets/original: "
                                        f"{type(exc).__name__} while downloading") from None
                time.sleep(min(self.backoff * (2 ** attempt),
                               max(0.0, t_end - time.monotonic())))
            finally:
                resp.close()
        raise AssertionError("unreachable")

    def read_original(self, asset_id: str) -> bytes:
        """An original's bytes in memory (the same caps and deadline as a download)."""
        method, endpoint = "GET", "/api/assets/original"
        t_end = time.monotonic() + self.deadline
        resp = self.request(method, f"/api/assets/{asset_id}/original", endpoint, t_end=t_end)
        return self._read_all(resp, self.max_original, t_end, method, endpoint, "the original")

    # ---- people (immich push) ---------------------------------------------------------------
    def check_version(self) -> tuple[int, int, int]:
        """The server's version; an ImmichError for a major whose endpoints are unknown."""
        v = self.version()
        if v[0] not in SUPPORTED_MAJORS:
            raise ImmichError(f"{self.server}: Immich {'.'.join(map(str, v))}: face-sets knows "
                              f"the people endpoints of majors "
                              f"{', '.join(map(str, SUPPORTED_MAJORS))} only and will not "
                              "guess; update face-sets")
        return v

    def people(self) -> list[dict]:
        """Every person (id, name), hidden ones too, page by page."""
        out, page, seen = [], 1, set()
        while True:
            data = self.json("GET", "/api/people", params={"page": page, "size": 500,
                                                          "withHidden": "true"})
            people = data.get("people") if isinstance(data, dict) else None
            got = [p for p in (people if isinstance(people, list) else [])
                   if isinstance(p, dict) and isinstance(p.get("id"), str)
                   and _SAFE_ID.fullmatch(p["id"]) and p["id"] not in seen]
            seen.update(p["id"] for p in got)
            out += got
            # no new person: the end, even when the server claims another page forever
            if not got or not data.get("hasNextPage"):
                return out
            page += 1

    def create_person(self, name: str) -> str:
        data = self.json("POST", "/api/people", "/api/people (create)", json={"name": name})
        pid = data.get("id") if isinstance(data, dict) else None
        if not isinstance(pid, str) or not _SAFE_ID.fullmatch(pid):
            raise RequestFailed(f"{self.server}: POST /api/people: no person id in the answer")
        return pid

    def assign_face(self, face_id: str, person_id: str) -> None:
        """Reassign one face to a person (``PUT /api/faces/{id}`` with ``{"id": person}``)."""
        if not (_SAFE_ID.fullmatch(face_id) and _SAFE_ID.fullmatch(person_id)):
            raise RequestFailed(f"{self.server}: refusing a malformed face or person id")
        self.request("PUT", f"/api/faces/{face_id}", "/api/faces/{id}",
                     json={"id": person_id}).close()


_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class _DeadlinePassed(Exception):
    """Internal: the request's deadline passed before an attempt could start."""


def _set_read_timeout(resp: requests.Response, seconds: float) -> None:
    """Let the next read of ``resp``'s body wait at most ``seconds`` (best effort: the
    socket is urllib3's; without it the read timeout given at the request still holds)."""
    sock = getattr(getattr(resp.raw, "_connection", None), "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(0.001, seconds))
        except OSError:
            pass


def _retry_after_s(value: str) -> float:
    try:
        return min(30.0, max(0.0, float(value)))
    except ValueError:
        try:
            return min(30.0, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            return 0.0


# ---- asset fields ------------------------------------------------------------------------
def _edge(v) -> bool:
    """A number that can be a width, height or coordinate in pixels (finite, in range)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and -MAX_PIXELS_EDGE <= v <= MAX_PIXELS_EDGE


def asset_dims(asset: dict) -> tuple[int, int] | None:
    """The original's (width, height): top-level ``width``/``height`` (Immich 1.1xx+), else
    EXIF; None when neither is a pair of finite positive sizes."""
    w, h = asset.get("width"), asset.get("height")
    if not (_edge(w) and _edge(h) and w >= 1 and h >= 1):
        exif = asset.get("exifInfo")
        exif = exif if isinstance(exif, dict) else {}
        w, h = exif.get("exifImageWidth"), exif.get("exifImageHeight")
        if not (_edge(w) and _edge(h) and w >= 1 and h >= 1):
            return None
        if exif.get("orientation") in ("5", "6", "7", "8", 5, 6, 7, 8):
            w, h = h, w
    return int(w), int(h)


def face_box(face: dict) -> tuple[float, float, float, float, float, float] | None:
    """(x1, y1, x2, y2, imageWidth, imageHeight) of an Immich face, the box clipped to its
    image; None when a field is missing, not a finite number in range, or the box is empty
    (junk a server may send: NaN, infinity, text, boxes outside the image)."""
    vals = [face.get(k) for k in ("boundingBoxX1", "boundingBoxY1", "boundingBoxX2",
                                  "boundingBoxY2", "imageWidth", "imageHeight")]
    if not all(_edge(v) for v in vals):
        return None
    x1, y1, x2, y2, iw, ih = map(float, vals)
    if iw < 1 or ih < 1:
        return None
    x1, x2 = max(0.0, x1), min(iw, x2)
    y1, y2 = max(0.0, y1), min(ih, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2, iw, ih


def face_short_edges(faces: list[dict], dims: tuple[int, int] | None) -> list[float]:
    """Short edge of each face box in the original's pixels (boxes ``face_box`` rejects are
    left out).

    Boxes are in the preview's ``imageWidth x imageHeight``; they scale by original / preview
    per axis (a preview rotated against the recorded original size is turned back first).
    Unknown original size: the preview's own pixels (a lower bound: previews are smaller).
    """
    out = []
    for f in faces:
        box = face_box(f)
        if box is None:
            continue
        x1, y1, x2, y2, iw, ih = box
        sx = sy = 1.0
        if dims is not None:
            w, h = dims
            if (iw > ih) != (w > h) and iw != ih and w != h:
                w, h = h, w
            sx, sy = w / iw, h / ih
        out.append(min((x2 - x1) * sx, (y2 - y1) * sy))
    return out


def asset_mtime_ns(asset: dict) -> int:
    from datetime import datetime

    for key in ("fileModifiedAt", "updatedAt", "fileCreatedAt"):
        v = asset.get(key)
        if isinstance(v, str):
            try:
                return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


class ImmichSource(PhotoSource):
    """The IMAGE assets of an Immich server (IMMICH_URL / IMMICH_API_KEY) as a photo source.

    Ids are ``immich://<host[:port]>/<asset id>``; reading an item downloads its original.
    ``immich stage`` uses the client directly (it filters by Immich's face boxes before
    downloading); this source serves code that wants every photo through the base interface.
    """

    kind = "immich"

    def __init__(self, location: str = "", client: ImmichClient | None = None,
                 include_archived: bool = False):
        if client is None:
            url, key = settings_from_env()
            client = ImmichClient(location or url, key)
        self.client = client
        self.include_archived = include_archived
        self._assets: dict[str, dict] | None = None
        self.prefix = "immich://" + (urlsplit(client.server).netloc or "server") + "/"

    def _listing(self) -> dict[str, dict]:
        if self._assets is None:
            vis = visibilities(self.include_archived)
            self._assets = {self.prefix + a["id"]: a for a in self.client.iter_assets(vis)}
        return self._assets

    def asset_id(self, item_id: str) -> str:
        if not item_id.startswith(self.prefix):
            raise FileNotFoundError(f"{item_id}: not an asset of {self.client.server}")
        return item_id[len(self.prefix):]

    def list_ids(self) -> list[str]:
        return sorted(self._listing())

    def item(self, item_id: str) -> SourceItem:
        a = self._listing().get(item_id)
        if a is None:
            raise FileNotFoundError(f"{item_id}: no such asset")
        size = (a.get("exifInfo") or {}).get("fileSizeInByte") or 0
        return SourceItem(item_id, int(size), asset_mtime_ns(a),
                          {"immich": self.client.server, "asset": a["id"],
                           "originalPath": a.get("originalPath"), "owner": a.get("ownerId")})

    def read_bytes(self, item_id: str) -> bytes:
        try:
            return self.client.read_original(self.asset_id(item_id))
        except ImmichAuthError as exc:
            raise PermissionError(str(exc)) from None
        except ImmichError as exc:
            raise OSError(str(exc)) from None

    def describe(self) -> dict:
        return {"kind": self.kind, "server": self.client.server,
                "include_archived": self.include_archived}


def visibilities(include_archived: bool) -> tuple[str | None, ...]:
    """The searches to page through: the default (timeline) one, plus archived photos
    asked for explicitly (a search without ``visibility`` means timeline only)."""
    return (None, VISIBILITY_ARCHIVE) if include_archived else (None,)
