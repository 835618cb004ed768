"""`immich stage` against hostile servers on 127.0.0.1 (tests/immich_server.py): one that
redirects to another origin, one that trickles an original, one that never answers, an
endless original, an oversized one, junk face boxes; and two stages of one user at once."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PACK, ROOT, run_cli
from immich_server import KEY, FakeAsset, FakeImmich
from test_immich import asset, assert_key_nowhere, library, originals, photos, stage, state


def strict_lines(root: Path) -> list[dict]:
    """Every line of the state, parsed as strict JSON (NaN and Infinity refused)."""
    def refuse(token):
        raise AssertionError(f"{token} in the state file")

    return [json.loads(line, parse_constant=refuse)
            for line in (root / ".immich" / "state.jsonl").read_text().splitlines()]


def comparable(root: Path) -> dict[str, tuple]:
    """What a run left: each asset's outcome and the staged files' bytes."""
    st = state(root)
    return {aid: (r["status"], r.get("path"), r.get("sha256"), r.get("faces"),
                  r.get("max_face"),
                  (root / r["path"]).read_bytes() if r["status"] == "staged" else None)
            for aid, r in st.items()}


def test_a_redirect_to_another_origin_is_refused_and_the_key_never_leaves(tmp_path):
    fake = FakeImmich(library()).start()
    other = FakeImmich(library()).start()           # records every request it gets
    try:
        # a redirect within the server's own origin is followed (a proxy's /path -> /path/)
        fake.redirects = {"faces": (307, fake.url)}
        ok = stage(fake, tmp_path / "same", "--no-queue")
        assert "staged 6" in ok.stdout, ok.stdout
        assert any("redirected=1" in path for _, path, _ in fake.seen)
        runs = []
        for kind, code in (("original", 302), ("search", 307), ("faces", 308)):
            fake.redirects = {kind: (code, other.url)}
            root = tmp_path / kind
            t0 = time.monotonic()
            r = stage(fake, root, "--no-queue", check=False)
            runs.append(r)
            assert r.returncode == 2 and time.monotonic() - t0 < 60, r.stdout + r.stderr
            err = r.stderr.strip().splitlines()
            # one line, saying where the server tried to send us and that we did not go
            assert len(err) == 1 and err[0].startswith("error: "), r.stderr
            assert f"redirected ({code}) to http://127.0.0.1:{other.port}/api/" in err[0]
            assert "did not follow" in err[0]
            assert not [p for p in root.rglob("*") if p.is_file() and p.suffix == ".jpg"]
        # the other server never saw the key (nor any request at all)
        assert not [h for _, _, h in other.seen if KEY in json.dumps(h)]
        assert other.seen == []
        # the same redirects through the photo-source interface (read_bytes)
        from facesets.sources.immich import ImmichClient, ImmichSource

        fake.redirects = {"original": (302, other.url)}
        src = ImmichSource(client=ImmichClient(fake.url, KEY))
        with pytest.raises(OSError, match=f"127.0.0.1:{other.port}"):
            src.read_bytes(src.list_ids()[0])
        assert other.seen == []
    finally:
        fake.stop()
        other.stop()
    assert_key_nowhere(tmp_path, *(r.stdout + r.stderr for r in runs))


def test_stalled_endless_and_oversized_originals_fail_alone_then_a_rerun_equals_a_clean_run(
        tmp_path):
    # distinct bytes and path tails: the outcome does not hang on which worker came first
    lib = [asset(n, p, f"/b/{n}/{p.name}") for n, p in enumerate(photos(0, 0, 4)
                                                               + photos(1, 0, 2), 1)]
    big = lib[1]                                   # a0002: 300 kB, declared in its length
    big.data = big.data + b"\0" * (300_000 - len(big.data))
    fake = FakeImmich(lib).start()
    try:
        fake.trickle = {"a0001-5f1c": 0.3}         # one byte every 0.3 s: never done
        fake.endless = {"a0003-5f1c"}              # no length, no end
        root = tmp_path / "alice"
        t0 = time.monotonic()
        r = stage(fake, root, "--no-queue", "--workers", "2", "--deadline", "3",
                  "--max-original-mb", "0.2")
        took = time.monotonic() - t0
        assert took < 40, (took, r.stdout)
        st = state(root)
        # the three failed alone, recorded as errors; the rest went on
        assert {a: st[a]["status"] for a in ("a0001-5f1c", "a0002-5f1c", "a0003-5f1c")} == \
            {a: "error" for a in ("a0001-5f1c", "a0002-5f1c", "a0003-5f1c")}, r.stdout
        assert "deadline of 3 s" in st["a0001-5f1c"]["reason"]
        assert "300000 bytes is larger than the cap of 200000 bytes" in \
            st["a0002-5f1c"]["reason"]
        assert "larger than the cap of 200000 bytes" in st["a0003-5f1c"]["reason"]
        assert all(st[a]["status"] == "staged" for a in ("a0004-5f1c", "a0005-5f1c",
                                                          "a0006-5f1c"))
        assert "3 failed (retried next run)" in r.stdout
        # nothing of them kept: no file, no .part, nothing near the endless body's size
        assert not list(root.rglob("*.part"))
        assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 500_000
        # the photo-source interface has the same cap
        from facesets.sources.immich import ImmichClient, ImmichSource

        src = ImmichSource(client=ImmichClient(fake.url, KEY, max_original_mb=0.2))
        with pytest.raises(OSError, match="larger than the cap"):
            src.read_bytes(src.prefix + "a0003-5f1c")
        # the server mends: the same command fetches only the three, and the result equals
        # a clean run's
        fake.trickle, fake.endless = {}, set()
        before = originals(fake)
        again = stage(fake, root, "--no-queue", "--max-original-mb", "1")
        assert "staged 3" in again.stdout and "0 failed" in again.stdout, again.stdout
        fetched = {a: n - before.get(a, 0) for a, n in originals(fake).items()
                   if n != before.get(a, 0)}
        assert set(fetched) == {"a0001-5f1c", "a0002-5f1c", "a0003-5f1c"}
        clean = stage(fake, tmp_path / "clean", "--no-queue", "--max-original-mb", "1")
        assert comparable(root) == comparable(tmp_path / "clean"), (again.stdout, clean.stdout)
    finally:
        fake.stop()
    assert_key_nowhere(tmp_path, r.stdout, again.stdout)


def test_a_server_that_never_answers_fails_within_the_deadline(tmp_path):
    fake = FakeImmich(library()).start()
    fake.silent = True
    try:
        t0 = time.monotonic()
        r = stage(fake, tmp_path / "alice", "--no-queue", "--deadline", "2", check=False)
        took = time.monotonic() - t0
    finally:
        fake.stop()
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{fake.port}" in err[0] \
        and "within the deadline of 2 s" in err[0], r.stderr
    assert took < 20, took                        # python start-up + 2 s, not minutes
    assert fake.seen and all(p == "/api/search/metadata" for _, p, _ in fake.seen)


def test_junk_face_boxes_are_dropped_and_the_state_stays_strict_json(tmp_path):
    nan, inf = float("nan"), float("inf")

    def box(x1, y1, x2, y2, w=125, h=125):
        return {"id": "f", "imageWidth": w, "imageHeight": h, "boundingBoxX1": x1,
                "boundingBoxY1": y1, "boundingBoxX2": x2, "boundingBoxY2": y2}

    pics = photos(0, 0, 6)
    lib = [asset(n, p, f"/j/{n}/{p.name}") for n, p in enumerate(pics, 1)]
    # an id that is no plain id (it would go into a URL and a file name): left out
    lib.append(FakeAsset("a0007/../../x", "/j/7/x.jpg", pics[0].read_bytes(), 250, 250,
                         [(70.0, 65.0, 180.0, 185.0)]))
    fake = FakeImmich(lib).start()
    fake.raw_faces = {
        "a0001-5f1c": [box(nan, nan, nan, nan)],
        "a0002-5f1c": [box(0, 0, inf, inf), box(-inf, 0, 60, 60, w=inf)],
        "a0003-5f1c": [box(0, 0, 1e308, 1e308), box("10", 0, 90, 90), box(0, 0, 90, 90, w=0),
                       box(0, 0, 90, 90, h=-125), box(True, 0, 90, 90), "junk", None],
        "a0004-5f1c": [box(200, 200, 300, 300)],                  # outside the image
        "a0005-5f1c": [box(nan, 0, 50, 50), box(35, 32, 90, 92)],  # one good face: 110 px
        "a0006-5f1c": [box(-40, -40, 70, 70)],              # clipped to the image: 140 px
    }
    try:
        r = stage(fake, tmp_path / "alice", "--no-queue")
        lines = strict_lines(tmp_path / "alice")
        again = stage(fake, tmp_path / "alice", "--no-queue")
    finally:
        fake.stop()
    st = state(tmp_path / "alice")
    assert {a: st[a]["status"] for a in st} == {
        "a0001-5f1c": "noface", "a0002-5f1c": "noface", "a0003-5f1c": "noface",
        "a0004-5f1c": "noface", "a0005-5f1c": "staged", "a0006-5f1c": "staged"}, r.stdout
    assert st["a0005-5f1c"]["faces"] == 1 and st["a0005-5f1c"]["max_face"] == \
        pytest.approx(110, abs=2)
    assert st["a0006-5f1c"]["max_face"] == pytest.approx(140, abs=2)
    assert all(math.isfinite(v) for rec in lines for v in rec.values()
               if isinstance(v, float))
    # the state reads back: the next run is not refused on any line
    assert "assets seen 6 (6 done before)" in again.stdout, again.stdout + again.stderr
    assert originals(fake) == {"a0005-5f1c": 1, "a0006-5f1c": 1}


def test_two_stages_of_one_user_at_once_the_second_is_refused_naming_the_lock(tmp_path):
    lib = [asset(n, p, f"/photos/k/{p.parent.name}-{p.name}")
           for n, p in enumerate(photos(3, 0, 6) + photos(4, 0, 6), 1)]
    fake = FakeImmich(lib, latency_s=1.0).start()   # the first stays busy ~12 s
    root = tmp_path / "alice"
    env = dict(os.environ, IMMICH_URL=fake.url, IMMICH_API_KEY=KEY, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "sort_faces.py"), "immich", "stage", "--user", "alice",
           "--cache", str(tmp_path / "c.npz"), "--root", str(root), "--workers", "2",
           "--no-queue", "--no-progress", *map(str, PACK)]
    try:
        first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        sf = root / ".immich" / "state.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None and not sf.exists():
            time.sleep(0.05)
        assert first.poll() is None, "the first stage ended before the second could start"
        second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        still_running = first.poll() is None
        fake.latency_s = 0.0
        out, err = first.communicate(timeout=120)
    finally:
        fake.stop()
    lock = tmp_path / ".alice.facesets.lock"
    assert second.returncode == 2, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(lock) in lines[0] \
        and f"pid {first.pid}" in lines[0], second.stderr
    assert still_running, "the first stage ended before the second was refused"
    assert first.returncode == 0, out + err
    final = state(root)
    assert len(final) == len(lib) and all(r["status"] == "staged" for r in final.values())
    assert not list(root.rglob("*.part")) and not lock.exists()
    assert max(originals(fake).values()) == 1


def test_replies_out_of_range_end_cleanly(tmp_path):
    """A people listing that claims a next page forever, a version of Infinity."""
    from facesets.sources.immich import ImmichClient, RequestFailed

    fake = FakeImmich(library()).start()
    fake.people = {"p0001": "ann", "p0002": "bob"}
    fake.people_pages_forever = True
    try:
        client = ImmichClient(fake.url, KEY)
        assert sorted(p["id"] for p in client.people()) == ["p0001", "p0002"]
        assert sum(p.startswith("/api/people") for _, p, _ in fake.seen) == 2
        fake.major = float("inf")
        with pytest.raises(RequestFailed, match="version: unexpected answer"):
            client.version()
    finally:
        fake.stop()
