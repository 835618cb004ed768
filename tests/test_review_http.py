"""The review server (`review SWAP_READY --no-browser`, a real subprocess) fed hostile HTTP
requests on a raw socket: a deeply nested JSON body, a body that is not UTF-8, a foreign
Origin with the right token. Each gets one JSON error line (400 / 403), the connection
answers, the server keeps serving, and the library on disk is unchanged."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAVE_SHARED, NO_SHARED, ROOT, TEST_THRESHOLD

if not HAVE_SHARED:    # test_identity_ops lists ../shared's photos when imported
    pytest.skip(NO_SHARED, allow_module_level=True)
from test_identity_ops import build_split, tree  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A review server on a copy of a small export; (port, token, folder, its tree)."""
    root = tmp_path_factory.mktemp("review_http")
    out = build_split(root)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "sort_faces.py"), "library", "review", str(out),
         "--no-browser", "--group-threshold", TEST_THRESHOLD, "--confident-threshold", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
    assert m, line
    try:
        yield int(m.group(1)), m.group(2), out, tree(out), proc
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST on a raw socket; (status, body). The server must answer, not drop it."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json",
            "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data, "the server dropped the connection without an answer"
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def one_error(body: bytes) -> str:
    doc = json.loads(body)
    assert doc["ok"] is False and "\n" not in doc["error"] and "Traceback" not in doc["error"]
    return doc["error"]


BODIES = {"deeply nested list": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
          "deeply nested object": (b'{"faceset": ' + b'{"a": ' * 50_000 + b"1"
                                   + b"}" * 50_001, "nested too deeply"),
          "not UTF-8": (b'{"faceset": "\xff\xfe"}', "not JSON")}


@pytest.mark.parametrize("what", list(BODIES))
def test_a_malformed_body_is_one_400_line(server, what):
    body, says = BODIES[what]
    code = 400
    port, token, out, original, proc = server
    status, answer = raw_post(port, "/api/rename", body, {"X-Review-Token": token})
    assert status == code, answer
    assert says in one_error(answer)
    assert proc.poll() is None and tree(out) == original


@pytest.mark.parametrize("origin", ["http://evil.example", "null",
                                    "http://127.0.0.1:1", "https://127.0.0.1"])
def test_a_foreign_origin_is_refused_even_with_the_token(server, origin):
    port, token, out, original, proc = server
    status, answer = raw_post(port, "/api/rename",
                              json.dumps({"faceset": "faceset_001", "name": "X"}).encode(),
                              {"X-Review-Token": token, "Origin": origin})
    assert status == 403 and "Origin" in one_error(answer)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /api/library?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Origin: {origin}\r\nConnection: close\r\n\r\n".encode())
        assert s.recv(64).split()[1] == b"403"
    assert tree(out) == original


def raw_get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("query, says", [
    ("", "two facesets"), ("&faceset=faceset_000", "two facesets"),
    ("&faceset=faceset_000&faceset=faceset_999", "no faceset 'faceset_999'"),
    ("&faceset=faceset_000&faceset=..%2Fmanifest.json", "no faceset '../manifest.json'"),
    ("&faceset=faceset_000&faceset=%2Fetc%2Fpasswd", "no faceset '/etc/passwd'")])
def test_a_bad_merge_preview_is_one_400_line_and_changes_nothing(server, query, says):
    port, token, out, original, proc = server
    status, answer = raw_get(port, f"/api/merge-preview?token={token}{query}")
    assert status == 400 and says in one_error(answer), answer
    assert proc.poll() is None and tree(out) == original


def test_merge_preview_and_favicon(server):
    port, token, out, original, proc = server
    status, answer = raw_get(port, f"/api/merge-preview?token={token}"
                             "&faceset=faceset_000&faceset=faceset_003")
    preview = json.loads(answer)
    assert status == 200 and sorted(preview["members"]) == ["faceset_000", "faceset_003"]
    assert 0 < preview["similarity"] <= 1      # each figure rounded to 3 places
    assert abs(preview["distance"] - (1 - preview["similarity"])) <= 0.0015
    assert raw_get(port, "/favicon.ico") == (204, b"")
    assert raw_get(port, "/favicon.ico", host="evil.example")[0] == 421
    assert tree(out) == original


def test_the_servers_own_origin_is_served(server):
    """The page's own requests (Origin: this server) still work: a rename, then undone."""
    port, token, out, original, proc = server
    own = f"http://127.0.0.1:{port}"
    status, answer = raw_post(port, "/api/rename",
                              json.dumps({"faceset": "faceset_001", "name": "Own"}).encode(),
                              {"X-Review-Token": token, "Origin": own})
    assert status == 200 and json.loads(answer)["ok"], answer
    status, answer = raw_post(port, "/api/undo", b"{}", {"X-Review-Token": token,
                                                         "Origin": own})
    assert status == 200, answer
    restored = tree(out)
    assert {k: v for k, v in restored.items() if not k.startswith((".runs/", "_thumbs/"))
            and k not in ("manifest.json", "index.html")} == \
        {k: v for k, v in original.items() if not k.startswith((".runs/", "_thumbs/"))
         and k not in ("manifest.json", "index.html")}
