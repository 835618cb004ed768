"""Video targets on the three real clips: shots, the face worker, tracks, segments, cuts.

One module-wide run (scenes -> stage -> worker -> track -> cut) on a folder holding the real
clips plus a zero-byte and a corrupt "video"; the tests read what it wrote. Low --fps and a
small detector input keep it fast on CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import PACK, ROOT, TEST_THRESHOLD, VIDEO, needs_shared, run_cli
from facesets.formats import video as vf
from facesets.formats.queue import QueueError, read_jsonl, validate_queue
from facesets.steps.video import link_tracks, sample_times, split_span

WORKER = ROOT / "work" / "video_face_worker.py"
FAST = ["--fps", "1", "--det-size", "320"]
# the clips' faces are 40-90 px at 640x360: the 80 px gate is lowered to see segments
GATES = ["--track-threshold", TEST_THRESHOLD, "--min-face-short", "40"]
VFR = "goldeneye-vfr-drop3"


def worker(queue, out, *extra, check=True):
    proc = subprocess.run([sys.executable, str(WORKER), str(queue), str(out), "--no-progress",
                           *map(str, extra)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"worker exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def ffprobe_duration(path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                          "csv=p=0", str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The whole pipeline once, on the real clips plus an empty and a corrupt video."""
    needs_shared()
    root = tmp_path_factory.mktemp("video")
    videos = root / "videos"
    videos.mkdir()
    for clip in VIDEO.glob("*.mp4"):
        os.symlink(clip, videos / clip.name)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    state, out = root / "state", root / "out"
    scenes = run_cli("video", "scenes", videos, state, "--no-progress")
    run_cli("video", "stage", state, *PACK, *FAST)
    work = worker(state / "queue.json", state / "faces")
    track = run_cli("video", "track", state, *GATES)
    cut = run_cli("video", "cut", state, out, "--no-progress", "--write-sidecar")
    return {"root": root, "videos": videos, "state": state, "out": out, "scenes": scenes,
            "worker": work, "track": track, "cut": cut}


def shots(state, key):
    return vf.load_scenes(vf.scenes_path(state, key))["shots"]


def test_shot_cuts_are_found_where_the_clips_have_them(run):
    vfr = shots(run["state"], VFR)
    cuts = [s["start_frame"] for s in vfr[1:]]
    assert len(cuts) == 2 and abs(cuts[0] - 60) <= 2 and abs(cuts[1] - 140) <= 2, cuts
    # variable frame rate: the cut times are the frames' own times, not frame / mean rate
    assert all(s["end"] > s["start"] for s in vfr)
    assert 2 <= len(shots(run["state"], "short_hamilton_clip")) - 1 <= 5
    (whole,) = shots(run["state"], "video_chunk_6s")   # no cut: one shot, the whole clip
    assert whole["start"] == 0 and whole["end"] == pytest.approx(6.0, abs=0.1)


def test_empty_and_corrupt_videos_are_reported_and_skipped(run):
    err = run["scenes"].stderr
    assert "skipped" in err and "empty.mp4: empty file" in err
    assert "corrupt.mp4: not a readable video" in err
    assert "skipped 2" in run["scenes"].stdout
    queue = json.loads((run["state"] / "queue.json").read_text())
    assert {it["key"] for it in queue["items"]} == {VFR, "short_hamilton_clip",
                                                     "video_chunk_6s"}
    # a second scan reads nothing again and still names them
    again = run_cli("video", "scenes", run["videos"], run["state"], "--no-progress")
    assert "scanned 0, unchanged 5, skipped 2" in again.stdout
    assert "empty.mp4" in again.stderr


def test_tracks_do_not_jump_between_people_in_one_shot(run):
    doc = vf.load_tracks(run["state"])
    # the 6 s clip: three people side by side throughout, one shot
    tracks = [t for t in doc["tracks"] if t["key"] == "video_chunk_6s"]
    assert len(tracks) == 3
    lanes = []
    for t in tracks:
        assert len(t["frames"]) >= 5   # each person followed through the clip
        xs = [(f["bbox"][0] + f["bbox"][2]) / 2 for f in t["frames"]]
        width = np.mean([f["bbox"][2] - f["bbox"][0] for f in t["frames"]])
        assert max(xs) - min(xs) < width, "a track jumped to another face"
        lanes.append((min(xs), max(xs)))
    lanes.sort()
    assert all(a[1] < b[0] for a, b in zip(lanes, lanes[1:])), "two tracks share a person"
    # no track crosses a shot boundary
    for t in doc["tracks"]:
        shot = shots(run["state"], t["key"])[t["shot"]]
        assert all(shot["start"] <= f["t"] <= shot["end"] for f in t["frames"])


@pytest.mark.unit
def test_two_people_crossing_keep_their_tracks():
    """Two faces swap places with overlapping boxes: the embedding keeps each on its track."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=128), rng.normal(size=128)
    frames = []
    for k in range(6):
        x = 100 + 20 * k          # A moves right, B moves left: they overlap mid-way
        frames.append({"t": k * 0.5, "faces": [
            {"bbox": [x, 50, x + 100, 150], "embedding": list(a + rng.normal(0, .1, 128))},
            {"bbox": [300 - 20 * k, 50, 400 - 20 * k, 150],
             "embedding": list(b + rng.normal(0, .1, 128))}]})
    tracks = link_tracks(frames, threshold=0.5)
    assert len(tracks) == 2
    for tr in tracks:
        xs = [f["bbox"][0] for _, f in tr]
        assert xs == sorted(xs) or xs == sorted(xs, reverse=True), "a track changed person"
    # a detection gap up to 2 s continues the track; a longer one starts a new track
    gap = [frames[0], {"t": 2.0, "faces": [frames[0]["faces"][0]]},
           {"t": 4.5, "faces": [frames[0]["faces"][0]]}]
    lens = sorted(len(t) for t in link_tracks(gap, threshold=0.5))
    assert lens == [1, 1, 2]


def test_every_clip_plays_and_matches_the_plan(run):
    assert "failed 0" in run["cut"].stdout
    plan = vf.load_plan(run["out"] / "plan.json")
    assert plan["mode"] == "copy" and plan["clips"]
    for clip in plan["clips"]:
        path = run["out"] / clip["file"]
        assert path.parent.name == clip["key"]           # per-source subfolder, UUID name
        assert json.loads(path.with_suffix(".json").read_text())["uuid"] == clip["uuid"]
        # stream copy starts at the keyframe at or before the segment's start
        assert clip["cut_start"] <= clip["start"]
        assert clip["start_moved_s"] == pytest.approx(clip["start"] - clip["cut_start"],
                                                      abs=1e-3)
        assert abs(ffprobe_duration(path) - clip["planned_duration"]) \
            <= clip["duration_tolerance_s"]
        decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
                                capture_output=True, text=True)
        assert decode.returncode == 0 and not decode.stderr.strip(), decode.stderr
        assert clip["gates"]["pass_ratio"] >= 0.7 and not clip["gates"]["yaw_checked"]
        assert 1.0 <= clip["end"] - clip["start"] <= 120.0
    # cutting again keeps every clip (same UUIDs) and rewrites the same plan
    again = run_cli("video", "cut", run["state"], run["out"], "--no-progress")
    assert f"already there {len(plan['clips'])}" in again.stdout
    assert [c["uuid"] for c in vf.load_plan(run["out"] / "plan.json")["clips"]] == \
        [c["uuid"] for c in plan["clips"]]


def test_reencode_cuts_at_the_exact_start(run, tmp_path):
    out, state = tmp_path / "exact", tmp_path / "state"
    shutil.copytree(run["state"], state, ignore=shutil.ignore_patterns(".worker.lock"))
    run_cli("video", "cut", state, out, "--no-progress", "--reencode")
    plan = vf.load_plan(out / "plan.json")
    assert plan["mode"] == "reencode" and plan["clips"]
    for clip in plan["clips"]:
        assert clip["start_moved_s"] == 0 and clip["cut_start"] == clip["start"]
        assert abs(ffprobe_duration(out / clip["file"]) - (clip["end"] - clip["start"])) \
            <= clip["duration_tolerance_s"]


def test_killed_worker_resumes(run, tmp_path):
    queue, out = run["state"] / "queue.json", tmp_path / "faces"
    items = json.loads(queue.read_text())["items"]
    log = out / vf.FRAMES_LOG
    proc = subprocess.Popen([sys.executable, str(WORKER), str(queue), str(out),
                             "--no-progress", "--flush-every", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(read_jsonl(log)[0]) < 2:
        assert proc.poll() is None, "worker ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(log)[0])
    assert 0 < done_before < len(items)

    second = worker(queue, out)
    assert f"already done {done_before}" in second.stdout
    records, bad = read_jsonl(log)
    assert bad == 0 and sorted(r["id"] for r in records) == sorted(i["id"] for i in items)
    # the same faces as the uninterrupted run
    full = {r["id"]: r for r in read_jsonl(run["state"] / "faces" / vf.FRAMES_LOG)[0]}
    for r in records:
        assert [len(f["faces"]) for f in r["frames"]] == \
            [len(f["faces"]) for f in full[r["id"]]["frames"]]


def test_faceset_filter_keeps_only_that_person(run, tmp_path):
    """--faceset: a swap-ready faceset manifest (written by export-swap's own builder) whose
    centroid is one person of the 6 s clip keeps only that person's segments."""
    from facesets.formats.manifest import SWAP_FACESET_MANIFEST, new_manifest
    from facesets.formats.swapset import faceset_manifest

    state = tmp_path / "state"
    shutil.copytree(run["state"], state, ignore=shutil.ignore_patterns(".worker.lock"))
    doc = vf.load_tracks(state)
    middle = sorted((t for t in doc["tracks"] if t["key"] == "video_chunk_6s"),
                    key=lambda t: t["frames"][0]["bbox"][0])[1]
    boxes = {(f["t"], tuple(f["bbox"])) for f in middle["frames"]}
    records = read_jsonl(state / "faces" / vf.FRAMES_LOG)[0]
    embs = [np.asarray(face["embedding"]) / np.linalg.norm(face["embedding"])
            for r in records if r["key"] == "video_chunk_6s" for fr in r["frames"]
            for face in fr["faces"] if (fr["t"], tuple(face["bbox"])) in boxes]
    assert len(embs) == len(middle["frames"])
    model = json.loads((state / "faces" / vf.MODEL_FILE).read_text())
    head = new_manifest(SWAP_FACESET_MANIFEST, str(tmp_path / "c.npz"), model, {})
    fdir = tmp_path / "swap_ready" / "faceset_007"
    fdir.mkdir(parents=True)
    (fdir / "manifest.json").write_text(json.dumps(faceset_manifest(
        head, "faceset_007", "faceset_007", "run1", 30, np.mean(embs, 0), [], [], 0, [])))
    out = run_cli("video", "track", state, *GATES, "--faceset", fdir,
                  "--faceset-threshold", "0.3")
    assert "match faceset_007" in out.stdout
    kept = vf.load_tracks(state)["segments"]
    assert [s["track"] for s in kept] == [middle["id"]]
    assert kept[0]["gates"]["faceset"] == "faceset_007"
    assert kept[0]["gates"]["faceset_distance"] < 0.1


def test_missing_ffmpeg_is_one_line(run, tmp_path):
    proc = run_cli("video", "cut", run["state"], tmp_path / "o", check=False,
                   env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: ffmpeg not found: install FFmpeg (Debian/Ubuntu: `sudo apt-get install -y "
        "ffmpeg`; macOS: `brew install ffmpeg`; Windows: `winget install ffmpeg`)"]


def test_tampered_state_is_one_line_naming_file_and_field(run, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(run["state"], state, ignore=shutil.ignore_patterns(".worker.lock"))
    tracks = json.loads((state / "tracks.json").read_text())
    tracks["segments"][0]["key"] = "../../etc"
    (state / "tracks.json").write_text(json.dumps(tracks))
    proc = run_cli("video", "cut", state, tmp_path / "o", check=False)
    assert proc.returncode == 2
    assert "tracks.json: segments[0].key '../../etc' is not a plain source name" in proc.stderr
    log = state / "faces" / vf.FRAMES_LOG
    recs = read_jsonl(log)[0]
    recs[-1]["frames"][0]["faces"] = [{"bbox": [0, 0, 1], "det_score": 2}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    proc = run_cli("video", "track", state, *GATES, check=False)
    assert proc.returncode == 2 and "frames.jsonl: record" in proc.stderr
    assert ".bbox [0, 0, 1] is not [x1, y1, x2, y2]" in proc.stderr


def test_chain_script_end_to_end_and_status(tmp_path):
    needs_shared()
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    os.symlink(VIDEO / "video_chunk_6s.mp4", videos / "video_chunk_6s.mp4")
    cmd = ["bash", str(ROOT / "work" / "run_video_pipeline.sh"), str(videos), str(out), "--",
           *PACK, *FAST, *GATES, "--max-len", "3"]
    env = dict(os.environ, PYTHON=sys.executable, SIDECAR="yes")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    plan = vf.load_plan(out / "plan.json")
    # three people through 6 s, each track split in two by --max-len 3
    assert len(plan["clips"]) == 6 and len({c["track"] for c in plan["clips"]}) == 3
    for clip in plan["clips"]:
        assert clip["end"] - clip["start"] == pytest.approx(3.0, abs=1e-3)
        path = out / clip["file"]
        assert path.is_file() and path.with_suffix(".json").is_file()
    status = subprocess.run(["bash", str(ROOT / "work" / "status_video_pipeline.sh"), str(out)],
                            capture_output=True, text=True, env=env)
    assert status.returncode == 0, status.stderr
    assert "run complete" in status.stdout and "frames scored 6, faces 18" in status.stdout
    assert "clips: 6 in plan.json (copy), 6 on disk" in status.stdout
    # a step that did not finish is where the next run starts
    done = out / ".video_state" / "steps.done"
    done.write_text("scenes\nstage\nworker\n")
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "== worker: already done in this run, skipped" in again.stdout
    assert "already there 6" in again.stdout


def test_video_frames_are_a_photo_source():
    """VideoSource: sampled frames by time (variable frame rate), read as encoded photos."""
    needs_shared()
    from facesets.io.imageio import decode
    from facesets.sources import open_source
    from facesets.sources.video import VideoSource

    clip = str(VIDEO / f"{VFR}.mp4")
    src = VideoSource(clip, shots=[(0.0, 3.75), (3.75, 8.76)], fps=1)
    ids = src.list_ids()
    assert ids[0] == f"{clip}#t=0.500" and len(ids) == 3 + 5
    assert src.item(ids[3]).provenance == {"video": clip, "t": 4.25}
    image = decode(src.read_bytes(ids[3]), 1)
    assert image.shape[:2] == (544, 1280)
    assert open_source(clip, kind="video").describe()["kind"] == "video"


@pytest.mark.unit
def test_sampling_splitting_and_the_video_queue_kind():
    assert sample_times(0.0, 2.0, 2) == [0.25, 0.75, 1.25, 1.75]
    assert sample_times(3.0, 3.1, 2) == [3.25]          # a very short shot: one frame
    assert split_span(0.0, 250.0, 120.0) == [(0.0, 83.3333), (83.3333, 166.6667),
                                             (166.6667, 250.0)]
    item = {"id": "clip#0", "path": "/v/clip.mp4", "key": "clip", "shot": 0, "size": 5,
            "start": 0.0, "end": 2.0}
    queue = {"format": "face-sets/queue", "version": 1, "kind": "video",
             "params": {"src": "/v", "fps": 2.0}, "items": [item]}
    validate_queue(queue, "q.json", "video")
    for field, value, why in (("path", "/elsewhere/x.mp4", "is not under a staged root"),
                              ("id", "other#0", "is not <key>#<shot>"),
                              ("end", -1, "is not a time in seconds")):
        bad = json.loads(json.dumps(queue))
        bad["items"][0][field] = value
        with pytest.raises(QueueError, match=f"items\\[0\\].{field} .*{why}"):
            validate_queue(bad, "q.json", "video")


@pytest.mark.unit
def test_plan_reader_refuses_a_path_outside_its_folder(tmp_path):
    clip = {"uuid": "9c30f579-5344-5d93-be4e-84ee657a4be8", "key": "a", "source": "/v/a.mp4",
            "file": "../9c30f579-5344-5d93-be4e-84ee657a4be8.mp4", "start": 1.0, "end": 2.0,
            "cut_start": 0.5, "start_moved_s": 0.5}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(vf.plan_doc("copy", [clip], 0.1)))
    with pytest.raises(vf.VideoFormatError, match=r"plan.json: clips\[0\].file .* is not "
                                                  r"<key>/<uuid>.mp4"):
        vf.load_plan(path)
    path.write_text(json.dumps(dict(vf.plan_doc("copy", [], 0.1), version=9)))
    with pytest.raises(vf.VideoFormatError, match="newer than this face-sets"):
        vf.load_plan(path)
