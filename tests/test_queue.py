"""Queue format, JSON Lines results and WSL <-> Windows path mapping (pure functions)."""
from __future__ import annotations

import json
import re

import pytest

from facesets.runtime.pathmap import (PathMapError, PathMapper, parse_rule, windows_to_wsl,
                              wsl_to_windows)
from facesets.formats.queue import (JsonlAppender, QueueError, load_queue, new_queue, read_jsonl,
                            write_queue)

pytestmark = pytest.mark.unit  # pure: path mapping and queue files only

ODD_NAMES = ["with space/a b.jpg", "ünïcødé/Zoë 日本.jpg", "hash#tag/#1.jpg",
             "percent%20/x.jpg", "emoji 🙂/face.png"]


# ---- path mapping -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ODD_NAMES)
def test_drive_paths_map_to_the_drive_and_back(name):
    wsl = f"/mnt/d/Photos/{name}"
    win = wsl_to_windows(wsl, "Ubuntu")
    assert win == "D:\\Photos\\" + name.replace("/", "\\")
    assert windows_to_wsl(win) == wsl


@pytest.mark.parametrize("name", ODD_NAMES)
def test_linux_paths_map_to_the_wsl_share_and_back(name):
    wsl = f"/home/me/{name}"
    win = wsl_to_windows(wsl, "Ubuntu-22.04")
    assert win == "\\\\wsl.localhost\\Ubuntu-22.04\\home\\me\\" + name.replace("/", "\\")
    assert windows_to_wsl(win) == wsl
    # the older \\wsl$ share name reads the same
    assert windows_to_wsl(win.replace("wsl.localhost", "wsl$")) == wsl


def test_drive_root_and_case():
    assert wsl_to_windows("/mnt/c", None) == "C:\\"
    assert wsl_to_windows("/mnt/C/x", None) == "C:\\x"
    assert windows_to_wsl("c:/Users/me") == "/mnt/c/Users/me"
    assert windows_to_wsl("C:\\") == "/mnt/c"


def test_names_windows_cannot_hold_use_wsl_private_characters():
    win = wsl_to_windows("/mnt/c/a:b/what?.jpg", None)
    assert win == "C:\\a\uf03ab\\what\uf03f.jpg"
    assert windows_to_wsl(win) == "/mnt/c/a:b/what?.jpg"


def test_long_paths_get_the_extended_prefix_both_ways():
    deep = "/".join(["a_rather_long_folder_name_%02d" % i for i in range(12)])
    drive = wsl_to_windows(f"/mnt/e/{deep}/x.jpg", None)
    assert drive.startswith("\\\\?\\E:\\") and len(drive) > 260
    assert windows_to_wsl(drive) == f"/mnt/e/{deep}/x.jpg"
    share = wsl_to_windows(f"/home/{deep}/x.jpg", "Debian")
    assert share.startswith("\\\\?\\UNC\\wsl.localhost\\Debian\\home\\")
    assert windows_to_wsl(share) == f"/home/{deep}/x.jpg"
    short = wsl_to_windows("/mnt/e/x.jpg", None)
    assert not short.startswith("\\\\?\\")


def test_relative_or_distro_less_paths_are_refused():
    with pytest.raises(PathMapError):
        wsl_to_windows("photos/x.jpg", "Ubuntu")
    with pytest.raises(PathMapError, match="--path-map"):
        wsl_to_windows("/home/me/x.jpg", None)
    with pytest.raises(PathMapError):
        windows_to_wsl("relative\\x.jpg")
    with pytest.raises(PathMapError, match="FROM=TO"):
        parse_rule("/home/me/photos")


def test_mapper_rules_override_longest_first_and_auto_applies_only_on_windows():
    m = PathMapper("Ubuntu", ["/home/me=D:\\mirror", "/home/me/photos/raw=E:\\raw"],
                   windows=True)
    assert m("/home/me/photos/raw/a b#1.jpg") == "E:\\raw\\a b#1.jpg"
    assert m("/home/me/photos/x.jpg") == "D:\\mirror\\photos\\x.jpg"
    assert m("/home/meg/x.jpg") == "\\\\wsl.localhost\\Ubuntu\\home\\meg\\x.jpg"  # not a prefix
    assert m("/mnt/c/x.jpg") == "C:\\x.jpg"
    linux = PathMapper("Ubuntu", ["/data/photos=/srv/photos"], windows=False)
    assert linux("/data/photos/ü/x.jpg") == "/srv/photos/ü/x.jpg"
    assert linux("/home/me/x.jpg") == "/home/me/x.jpg"  # no auto mapping off Windows
    # a rule's FROM may be typed in Windows form
    assert parse_rule("C:\\Photos=/srv/p") == ("/mnt/c/Photos", "/srv/p")


# ---- queue documents ------------------------------------------------------------------------
def test_queue_round_trip_and_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_DISTRO_NAME", "Ubuntu")
    item = {"id": "fs/faces/ä #1.png", "path": "/x/fs/faces/ä #1.png", "faceset": "fs",
            "file": "faces/ä #1.png", "size": 10, "sha256": "0" * 64}
    q = new_queue("multiface", {"det_size": 640, "export": "/x"}, [item])
    path = tmp_path / "q.json"
    write_queue(path, q)
    back = load_queue(path, "multiface")
    assert back["wsl_distro"] == "Ubuntu" and back["items"] == q["items"]
    with pytest.raises(QueueError, match="multiface worker"):
        load_queue(path, "embed")
    bad_docs = [
        {"format": "other"},
        dict(q, version=99),
        dict(q, kind="zzz"),
        dict(q, items=[item, item]),
        dict(q, items=[{"id": 3, "path": "/x"}]),
        dict(q, items="nope"),
        dict(q, wsl_distro="../../etc"),
        [1, 2],
    ]
    for doc in bad_docs:
        path.write_text(json.dumps(doc))
        with pytest.raises(QueueError):
            load_queue(path)
    path.write_text('{"format": "face-sets/queue", "items": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_queue(path)
    with pytest.raises(FileNotFoundError):
        load_queue(tmp_path / "missing.json")


# ---- JSON Lines ------------------------------------------------------------------------------
def test_truncated_last_jsonl_line_is_ignored_then_cut_before_appending(tmp_path):
    log = tmp_path / "r.jsonl"
    w = JsonlAppender(log)
    w.extend([{"id": "a", "faces": 1}, {"id": "b", "faces": 2}])
    w.flush()
    with open(log, "ab") as fh:  # what a kill mid-write leaves
        fh.write(b'{"id": "c", "fa')
    records, bad = read_jsonl(log)
    assert [r["id"] for r in records] == ["a", "b"] and bad == 1
    w2 = JsonlAppender(log)
    w2.add({"id": "c", "faces": 0})
    w2.flush()
    records, bad = read_jsonl(log)
    assert [r["id"] for r in records] == ["a", "b", "c"] and bad == 0
    assert log.read_bytes().endswith(b"\n")
    assert read_jsonl(tmp_path / "none.jsonl") == ([], 0)


def test_queue_paths_must_lie_under_the_staged_root():
    from facesets.formats.queue import validate_queue

    sha = "a" * 64

    def embed_queue(src, path, aliases=()):
        return new_queue("embed", {"model": "m", "det_size": 640, "src": src},
                         [{"id": sha, "sha256": sha, "path": path, "size": 1, "mtime_ns": 2,
                           "aliases": [{"path": a, "size": 1, "mtime_ns": 2}
                                       for a in aliases]}])
    validate_queue(embed_queue("/p", "/p/a.jpg", ["/p/sub/b.jpg"]), "q.json")
    validate_queue(embed_queue("/p/one.jpg", "/p/one.jpg"), "q.json")   # SRC a single photo
    refused = {
        ("/p", "/p2/a.jpg", ()): "items[0].path '/p2/a.jpg' is not under a staged root",
        ("/p", "/p/a.jpg", ("/etc/passwd",)): "items[0].aliases[0] '/etc/passwd' is not under",
        ("/p", "a.jpg", ()): "items[0].path 'a.jpg' is not an absolute path",
        ("/p", "/p/../etc/passwd", ()): "'..' component",
        ("p", "/p/a.jpg", ()): "params.src 'p' is not an absolute path",
    }
    for (src, path, aliases), msg in refused.items():
        with pytest.raises(QueueError, match=re.escape(msg)):
            validate_queue(embed_queue(src, path, aliases), "q.json")
