"""`immich stage` and `immich finalize` against a real HTTP server on 127.0.0.1
(tests/immich_server.py) serving the real test photos as originals, with face boxes reported
in a preview half the original's size (as Immich does), so a client that did not scale them
back would find every face too small."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FACES, LOW_GATES, PACK, ROOT, TEST_THRESHOLD, run_cli
from immich_server import KEY, FakeAsset, FakeImmich

# a face box in an LFW photo (250 x 250): 110 px short edge in the original, 55 in the preview
BIG = (70.0, 65.0, 180.0, 185.0)
SMALL = (100.0, 100.0, 140.0, 140.0)          # 40 px: below the default --min-face 90


def photos(person: int, first: int, n: int) -> list[Path]:
    folder = sorted(p for p in FACES.iterdir() if p.is_dir())[person]
    return sorted(folder.glob("*.jpg"))[first:first + n]


def asset(n: int, path: Path, original_path: str, faces=(BIG,), archived=False) -> FakeAsset:
    return FakeAsset(f"a{n:04d}-5f1c", original_path, path.read_bytes(), 250, 250,
                     list(faces), archived)


def library() -> list[FakeAsset]:
    """Eleven assets: five with a big face (one of them byte-identical to another, two with
    the same path tail), one without faces, one with only a small face, one Immich
    thumbnail indexed as a photo, one RAW file, one archived photo."""
    p = photos(0, 0, 4) + photos(1, 0, 3)
    return [asset(1, p[0], "/photos/2019/trip/IMG_0001.jpg"),
            asset(2, p[1], "/photos/2019/trip/IMG_0002.jpg"),
            asset(3, p[2], "/photos/2020/home/IMG_0001.jpg"),
            asset(4, p[3], "/other/2020/home/IMG_0001.jpg"),          # same tail as a0003
            asset(5, p[0], "/photos/copies/IMG_0001 (1).jpg"),        # same bytes as a0001
            asset(6, p[4], "/photos/2021/x/noface.jpg", faces=()),
            asset(7, p[5], "/photos/2021/x/small.jpg", faces=(SMALL,)),
            asset(8, p[6], "/data/library/thumbs/u1/ab/cd/a0008-preview.jpeg"),
            asset(9, p[6], "/photos/2021/raw/DSC_0001.NEF"),
            asset(10, p[6], "/photos/2021/archive/IMG_0010.jpg", archived=True),
            asset(11, photos(2, 0, 1)[0], "/photos/2022/.hidden/IMG_0011.jpg",
                  faces=(SMALL, BIG))]


@pytest.fixture
def server():
    fake = FakeImmich(library(), ignore_size=True, page_cap=3).start()
    yield fake
    fake.stop()


def stage(fake: FakeImmich, root: Path, *extra, check=True, key=KEY, **kw):
    env = {"IMMICH_URL": fake.url, "IMMICH_API_KEY": key,
           "FACESETS_WORK_DIR": str(root.parent / "work")}
    return run_cli("immich", "stage", "--user", "alice", "--cache", root.parent / "c.npz",
                   "--root", root, "--no-progress", *PACK, *extra, check=check, env=env, **kw)


def state(root: Path) -> dict[str, dict]:
    lines = (root / ".immich" / "state.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["format"] == "face-sets/immich-state"
    latest = {}
    for line in lines[1:]:
        r = json.loads(line)
        latest[r["asset"]] = r
    return latest


def assert_key_nowhere(folder: Path, *texts: str) -> None:
    """The API key is in no file written under ``folder`` and in no output."""
    for t in texts:
        assert KEY not in t
    for p in folder.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


def originals(fake: FakeImmich) -> dict[str, int]:
    return {aid: n for (kind, aid), n in fake.served.items() if kind == "original"}


def test_stage_pages_filters_dedups_and_resumes_without_refetching(server, tmp_path):
    root = tmp_path / "alice"
    r = stage(server, root, "--skip-thumbs", "--workers", "4")
    st = state(root)
    status = {aid[:5]: rec["status"] for aid, rec in st.items()}
    # the server ignored size=250 (pages of 3) and repeated its last page: paging stopped
    # there, every timeline asset listed once; archived ones only when asked
    assert status == {"a0001": "staged", "a0002": "staged", "a0003": "staged",
                      "a0004": "staged", "a0005": "alias", "a0006": "noface",
                      "a0007": "small", "a0008": "thumb", "a0009": "unsupported",
                      "a0011": "staged"}, r.stdout
    assert all("visibility" not in b for b in server.search_bodies)
    assert len(server.search_bodies) <= 6        # 4 pages of 3 + the repeated one
    # boxes were scaled from the 125 px preview to the 250 px original (55 px -> 110 px)
    assert st["a0001-5f1c"]["max_face"] == pytest.approx(110, abs=2)
    assert st["a0007-5f1c"]["max_face"] == pytest.approx(40, abs=2)
    # originals fetched only for assets passing the filters, each once
    assert originals(server) == {f"a000{i}-5f1c": 1 for i in (1, 2, 3, 4, 5)} | {
        "a0011-5f1c": 1}
    # files: <originalPath tail>, same tail suffixed, never hidden, bytes as served
    lib = {a.id: a for a in server.assets}
    for aid in ("a0001-5f1c", "a0002-5f1c", "a0003-5f1c", "a0004-5f1c", "a0011-5f1c"):
        assert (root / st[aid]["path"]).read_bytes() == lib[aid].data
    assert st["a0001-5f1c"]["path"] == "trip/IMG_0001.jpg"
    # two originals with one tail: the second to arrive is suffixed with its asset id
    tails = {st["a0003-5f1c"]["path"], st["a0004-5f1c"]["path"]}
    assert tails in ({"home/IMG_0001.jpg", "home/IMG_0001-a0004-5f1c.jpg"},
                     {"home/IMG_0001.jpg", "home/IMG_0001-a0003-5f1c.jpg"})
    assert st["a0011-5f1c"]["path"] == "_hidden/IMG_0011.jpg"
    assert st["a0005-5f1c"]["path"] == "trip/IMG_0001.jpg"        # alias of a0001
    assert not list(root.rglob("*.part"))
    # the embed queue lists the five distinct staged photos
    queue = json.loads((root / ".immich" / "queue.json").read_text())
    assert sorted(Path(i["path"]).relative_to(root).as_posix() for i in queue["items"]) == \
        sorted(st[a]["path"] for a in ("a0001-5f1c", "a0002-5f1c", "a0003-5f1c",
                                       "a0004-5f1c", "a0011-5f1c"))
    assert "assets seen 10 (0 done before), staged 5" in r.stdout
    # the same command again: nothing fetched, nothing staged
    faces_before = dict(server.served)
    again = stage(server, root, "--skip-thumbs")
    assert "assets seen 10 (10 done before), staged 0" in again.stdout
    assert dict(server.served) == faces_before
    # archived photos: asked for with an explicit visibility
    arch = stage(server, root, "--skip-thumbs", "--include-archived")
    assert any(b.get("visibility") == "archive" for b in server.search_bodies)
    assert state(root)["a0010-5f1c"]["status"] == "staged"
    assert "assets seen 11 (10 done before), staged 1" in arch.stdout
    assert_key_nowhere(tmp_path, r.stdout, r.stderr, again.stdout, arch.stdout, arch.stderr)


def test_a_burst_of_5xx_is_absorbed_by_the_retries(server, tmp_path):
    root = tmp_path / "alice"
    server.fail_next = 3                      # fewer than one request's 4 attempts
    r = stage(server, root, "--workers", "2", "--embed")
    assert server.fail_next == 0
    assert "0 failed" in r.stdout and "staged 6" in r.stdout, r.stdout
    assert not any(rec["status"] == "error" for rec in state(root).values())
    # --embed: the staged originals went into the cache in-process
    from facesets.formats.cache import load_cache

    cache = load_cache(tmp_path / "c.npz")
    staged = {rec["sha256"] for rec in state(root).values() if rec["status"] == "staged"}
    assert set(cache.files["sha256"].tolist()) == staged and cache.n_faces >= 6, r.stdout
    assert_key_nowhere(tmp_path, r.stdout, r.stderr)


def test_dead_server_trips_the_breaker_then_the_same_command_finishes(server, tmp_path):
    root = tmp_path / "alice"
    server.die_after_originals = 2
    r = stage(server, root, "--workers", "2", "--no-queue", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "stopped answering" in err[0] \
        and "re-run the same command when the server is back" in err[0], r.stderr
    saved = state(root)
    assert sum(rec["status"] == "staged" for rec in saved.values()) >= 1
    server.start()                            # the server is back, on the same port
    server.die_after_originals = None
    r2 = stage(server, root, "--workers", "2", "--no-queue")
    final = state(root)
    assert sorted(rec["status"] for rec in final.values()).count("staged") == 6, r2.stdout
    assert not any(rec["status"] == "error" for rec in final.values())
    # nothing answered twice: every face list and every original was served once at most
    assert max(server.served.values()) == 1, server.served
    assert len(originals(server)) == 7         # 6 staged + the copy of a0001
    assert_key_nowhere(tmp_path, r.stdout, r.stderr, r2.stdout, r2.stderr)


def test_a_wrong_key_is_one_line_and_stages_nothing(server, tmp_path):
    root = tmp_path / "alice"
    r = stage(server, root, "--no-queue", check=False, key="not-the-key-8t5")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "401" in r.stderr and "wrong or expired" in r.stderr
    assert "not-the-key-8t5" not in r.stderr + r.stdout
    assert not server.served and not [p for p in root.rglob("*.jpg")]
    server.forbid_originals = True            # a key without asset.download: named
    r403 = stage(server, root, "--no-queue", check=False)
    assert r403.returncode == 2 and r403.stderr.count("\n") == 1, r403.stderr
    assert "403" in r403.stderr and "asset.download" in r403.stderr
    missing = run_cli("immich", "stage", "--user", "alice", "--cache", tmp_path / "c.npz",
                      "--root", root, check=False,
                      env={"IMMICH_URL": server.url, "IMMICH_API_KEY": ""})
    assert missing.returncode == 2 and "IMMICH_API_KEY" in missing.stderr


def test_kill_9_mid_stage_then_resume(tmp_path):
    lib = [asset(n, p, f"/photos/k/{p.parent.name}-{p.name}")
           for n, p in enumerate(photos(3, 0, 6) + photos(4, 0, 6), 1)]
    fake = FakeImmich(lib, latency_s=0.15).start()
    root = tmp_path / "alice"
    env = dict(os.environ, IMMICH_URL=fake.url, IMMICH_API_KEY=KEY, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "sort_faces.py"), "immich", "stage", "--user", "alice",
           "--cache", str(tmp_path / "c.npz"), "--root", str(root), "--workers", "2",
           "--no-queue", "--no-progress"]
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        sf = root / ".immich" / "state.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if sf.exists() and len(sf.read_text().splitlines()) >= 4:   # header + 3 assets
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = state(root)
        assert 3 <= len(before) < len(lib), "the kill came too late to test a resume"
        fake.latency_s = 0.0
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        final = state(root)
        assert len(final) == len(lib) and all(s["status"] == "staged" for s in final.values())
        for a in lib:
            assert (root / final[a.id]["path"]).read_bytes() == a.data
        # recorded assets were not fetched again; only the two in flight at the kill were
        got = originals(fake)
        assert all(got[aid] == 1 for aid in before)
        assert sum(got.values()) - len(lib) <= 2
        assert not list(root.rglob("*.part"))
        assert_key_nowhere(tmp_path, r.stdout, r.stderr)
    finally:
        fake.stop()


def test_finalize_grows_facesets_adds_a_new_one_numbered_past_the_max_and_resumes(tmp_path):
    from test_run import RUN_ARGS

    import shutil

    lib = tmp_path / "lib"
    for person in range(3):
        for p in photos(person, 0, 6):
            (lib / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, lib / p.parent.name / p.name)
    out, cache = tmp_path / "out", tmp_path / "c.npz"
    work = tmp_path / "work"
    run_cli("run", lib, out, "--cache", cache, *RUN_ARGS, env={"FACESETS_WORK_DIR": str(work)})
    swap = out / "swap_ready"
    before = {d.name: len(list((d / "faces").glob("*.png")))
              for d in swap.iterdir() if d.name.startswith("faceset_")}
    assert len(before) == 3
    # Immich: 3 new photos of person 0, one photo the cache already holds, 6 photos of a
    # person face-sets has not seen, one photo without faces
    assets = [asset(n, p, f"/up/{p.parent.name}/{p.name}") for n, p in enumerate(
        photos(0, 6, 3) + photos(0, 0, 1) + photos(3, 0, 6), 1)]
    assets.append(asset(20, photos(4, 0, 1)[0], "/up/x/none.jpg", faces=()))
    fake = FakeImmich(assets).start()
    env = dict(os.environ, IMMICH_URL=fake.url, IMMICH_API_KEY=KEY, FACESETS_WORK_DIR=str(work),
               WIN_PYTHON=sys.executable, PYTHON=sys.executable)
    script = ROOT / "work" / "finalize_immich.sh"

    def finalize(*args):   # the script: stage -> worker (a local Python here) -> merge -> ...
        return subprocess.run(["bash", str(script), *map(str, args)], env=env, cwd=ROOT,
                              capture_output=True, text=True)

    common = ["alice", "--cache", cache, "--out", out, *PACK,
              "--extend-args=--engine exact"]
    good_export = f"--swap-outlier-threshold {TEST_THRESHOLD} --min-face-short 40 --no-progress"
    try:
        # the export step fails (a bad option): everything before it is done and recorded
        bad = finalize(*common, "--export-args=--no-such-option")
        assert bad.returncode == 2 and "step export failed" in bad.stderr, bad.stdout
        root = work / "immich" / "alice"
        done = json.loads((root / ".immich" / "finalize.json").read_text())["done"]
        assert done == ["stage", "worker", "merge", "match"]
        served = dict(fake.served)
        discover = (f"--discover-args=--near-threshold 0.5 --initial-threshold "
                    f"{TEST_THRESHOLD} --merge-threshold 0.5 --outlier-threshold "
                    f"{TEST_THRESHOLD} --swap-outlier-threshold {TEST_THRESHOLD} "
                    f"{' '.join(LOW_GATES)}")
        r = finalize(*common, f"--export-args={good_export}", discover)
        assert r.returncode == 0, r.stdout + r.stderr
        served_after = dict(fake.served)
        st = state(root)
        after = {d.name: len(list((d / "faces").glob("*.png")))
                 for d in swap.iterdir() if d.name.startswith("faceset_")}
        logs = {p.name.split("-")[2] for p in (work / "logs").glob("immich-alice-*.log")}
        # push: the facesets back to Immich as people, --dry-run first
        push = ["immich", "push", "--user", "alice", "--out", out]
        dry = run_cli(*push, "--dry-run", env=env)
        assert not fake.people and not fake.face_person and "nothing changed" in dry.stdout
        pushed = run_cli(*push, env=env)
        again = run_cli(*push, env=env)
        fake.major = 9
        refused = run_cli(*push, "--dry-run", env=env, check=False)
        fake.major = 1
        # a month later, one more photo in Immich: finalize in-process (no worker) fetches
        # only that one and folds it into the new faceset
        extra = photos(3, 6, 1)[0]
        fake.assets.append(asset(30, extra, f"/up/{extra.parent.name}/{extra.name}"))
        fake.by_id = {a.id: a for a in fake.assets}
        served_before_local = dict(fake.served)
        # ... run from the library's folder with every path relative (--out, --cache,
        # $FACESETS_WORK_DIR): the steps run elsewhere, so finalize resolves them first
        local_env = {k: v for k, v in env.items() if k != "WIN_PYTHON"}
        local_env["FACESETS_WORK_DIR"] = "work"
        relative = ["alice", "--cache", "c.npz", "--out", "out", *PACK,
                    "--extend-args=--engine exact"]
        local = run_cli("immich", "finalize", *relative, f"--export-args={good_export}",
                        discover, env=local_env, check=False, cwd=tmp_path)
    finally:
        fake.stop()
    # resumed at export: no step before it ran again (nothing fetched, nothing embedded)
    for step in ("stage", "worker", "merge", "match"):
        assert f"== {step}: done in this run already, skipped" in r.stdout
    assert served_after == served
    assert sorted(rec["status"] for rec in st.values()) == \
        ["known"] + ["noface"] + ["staged"] * 9
    new = sorted(set(after) - set(before))
    assert new == [f"faceset_{len(before):03d}"], (before, after, r.stdout)
    assert after[new[0]] >= 5
    grown = [n for n in before if after[n] > before[n]]
    assert len(grown) == 1 and after[grown[0]] >= before[grown[0]] + 2, (before, after)
    assert logs == {"stage", "worker", "merge", "match", "discover", "export"}
    assert "== discover:" in r.stdout and "--dry-run" in r.stdout
    # every Immich face face-sets placed in a faceset now belongs to that faceset's person;
    # faces of one person went to one Immich person, and a second push assigned nothing
    lib = {a.id: a for a in assets}
    by_person: dict[str, set[str]] = {}
    for face_id, pid in fake.face_person.items():
        photo = lib[face_id.rsplit("-f", 1)[0]]
        by_person.setdefault(pid, set()).add(Path(photo.original_path).parent.name)
    assert len(by_person) == 2 and all(len(v) == 1 for v in by_person.values()), by_person
    assert len(fake.face_person) >= 9, pushed.stdout
    assert sorted(fake.people.values()) == sorted(
        [new[0], grown_name(before, swap)]), fake.people
    assert "0 people created, 0 faces assigned" in again.stdout
    assert refused.returncode == 2 and "will not guess" in refused.stderr
    # the in-process finalize: only the new asset fetched, and it joined the new faceset
    assert local.returncode == 0, local.stdout + local.stderr
    assert "== embed:" in local.stdout and "== worker" not in local.stdout
    assert {k: v for k, v in fake.served.items() if v != served_before_local.get(k)} == {
        ("faces", "a0030-5f1c"): 1, ("original", "a0030-5f1c"): 1}
    final = {d.name: len(list((d / "faces").glob("*.png")))
             for d in swap.iterdir() if d.name.startswith("faceset_")}
    assert final[new[0]] == after[new[0]] + 1, local.stdout
    assert_key_nowhere(tmp_path, bad.stdout, bad.stderr, r.stdout, r.stderr, dry.stdout,
                       pushed.stdout, refused.stderr, local.stdout, local.stderr)


def grown_name(before: dict, swap: Path) -> str:
    """The faceset of person 0 (the one the new Immich photos of that person joined)."""
    person0 = photos(0, 0, 1)[0].parent.name
    for name in before:
        m = json.loads((swap / name / "manifest.json").read_text())
        if any(person0 in f["path"] for f in m["faces"]):
            return name
    raise AssertionError("no faceset of person 0")


def test_immich_is_a_photo_source_behind_the_common_interface(server, monkeypatch):
    from facesets.sources import open_source

    monkeypatch.setenv("IMMICH_URL", server.url)
    monkeypatch.setenv("IMMICH_API_KEY", KEY)
    src = open_source(server.url, "immich")
    ids = src.list_ids()
    assert len(ids) == 10 and all(i.startswith(f"immich://127.0.0.1:{server.port}/")
                                  for i in ids)
    first = src.item(ids[0])
    lib = {a.id: a for a in server.assets}
    assert first.provenance["asset"] == "a0001-5f1c" and first.size == len(lib["a0001-5f1c"].data)
    assert src.read_bytes(ids[0]) == lib["a0001-5f1c"].data
    assert KEY not in repr(src.client) + json.dumps(src.describe())
    with pytest.raises(FileNotFoundError):
        src.read_bytes("immich://elsewhere/a0001-5f1c")
