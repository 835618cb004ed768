"""`video cut` against hostile state, concurrent runs, a lying ffmpeg and kills (issue 21).

The source is an H.264 (B-frames) + AAC video made here with ffmpeg from two test clips:
100 frames of one, then 100 of the other, 25 fps, so one shot boundary sits at exactly 4.0 s
(frame 100) and PySceneDetect finds the test clip's own cuts before it. tracks.json is
written with one segment per detected shot, the whole shot: every clip ends at a shot
boundary, the worst case for a stream copy.
"""
from __future__ import annotations

import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import VIDEO, needs_shared, run_cli
from facesets.formats import video as vf
from killharness import KILLED, KillHarness, Scenario, compare, is_leftover, sample_points, \
    state

FPS = 25
SHOT_FRAMES = 100     # frames taken from each test clip
KEY = "two_shots"


def make_two_shot_video(dest: Path) -> None:
    """100 frames of short_hamilton_clip then 100 of video_chunk_6s, H.264 with B-frames
    (x264 defaults), keyframes forced at 0 and 4 s, a 440 Hz AAC track."""
    chain = "fps={fps},scale=640:360,setsar=1,trim=end_frame={n},setpts=PTS-STARTPTS"
    graph = (f"[0:v]{chain}[a];[1:v]{chain}[b];[a][b]concat=n=2:v=1:a=0[v]"
             .format(fps=FPS, n=SHOT_FRAMES))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(VIDEO / "short_hamilton_clip.mp4"),
                    "-i", str(VIDEO / "video_chunk_6s.mp4"), "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100:duration=8", "-filter_complex",
                    graph, "-map", "[v]", "-map", "2:a", "-c:v", "libx264", "-preset",
                    "veryfast", "-g", "50", "-force_key_frames", "0,4", "-c:a", "aac",
                    str(dest)], check=True, capture_output=True)


def build_state(w: Path, video: Path) -> None:
    """W/videos/two_shots.mp4, W/state: `video scenes`, and tracks.json with one segment per
    shot spanning it whole."""
    (w / "videos").mkdir(parents=True)
    shutil.copy2(video, w / "videos" / f"{KEY}.mp4")
    run_cli("video", "scenes", w / "videos", w / "state", "--no-progress")
    scenes = vf.load_scenes(vf.scenes_path(w / "state", KEY))
    tracks, segments = [], []
    for n, shot in enumerate(scenes["shots"]):
        tid = f"{KEY}#{n}#0"
        tracks.append({"id": tid, "key": KEY, "shot": n, "video": scenes["video"],
                       "frames": [], "pass_ratio": 1.0})
        segments.append({"track": tid, "key": KEY, "video": scenes["video"], "shot": n,
                         "start": shot["start"], "end": shot["end"], "pass_ratio": 1.0,
                         "gates": {"pass_ratio": 1.0, "min_pass": 0.7}})
    vf.write_tracks(w / "state", vf.tracks_doc({"fps": 2.0}, tracks, segments))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    needs_shared()
    path = tmp_path_factory.mktemp("src") / f"{KEY}.mp4"
    make_two_shot_video(path)
    return path


@pytest.fixture
def work(source, tmp_path) -> Path:
    build_state(tmp_path / "w", source)
    return tmp_path / "w"


def clip_frames(path: Path) -> int:
    """Video frames of a clip, decoded (ffprobe -count_frames)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def decodes(path: Path) -> bool:
    proc = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and not proc.stderr.strip()


def frames_of(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame.astype(np.float32))
    cap.release()
    return out


def check_clips_end_in_their_shot(w: Path, out: Path, source_frames: list[np.ndarray]) -> dict:
    """Every clip of OUT/plan.json decodes and holds only frames of its own shot: it starts
    at or after the shot's start, on the source frame at its cut_start; it counts no more
    frames than the source shows from there to the end of its shot, and its last frame is
    the source frame before that end (not the next shot's first)."""
    plan = vf.load_plan(out / vf.PLAN_FILE)
    shots = vf.load_scenes(vf.scenes_path(w / "state", KEY))["shots"]
    assert len(plan["clips"]) == len(shots)
    for clip in plan["clips"]:
        path = out / clip["file"]
        assert decodes(path), path
        shot = shots[clip["shot"]]
        first = round(clip["cut_start"] * FPS)
        allowed = shot["end_frame"] - first          # source frames first..end_frame-1
        frames = clip_frames(path)
        assert frames == clip["frames"] <= clip["frames_max"] <= allowed, (clip, frames)
        assert frames >= allowed - 3, f"{clip['file']} lost {allowed - frames} frames"
        assert first >= shot["start_frame"], f"{clip['file']} opens on the previous shot"
        decoded = frames_of(path)
        assert np.abs(decoded[0] - source_frames[first]).mean() < 4
        last = decoded[-1]
        own = np.abs(last - source_frames[first + frames - 1]).mean()
        if shot["end_frame"] < len(source_frames):   # the next shot's first frame
            nxt = np.abs(last - source_frames[shot["end_frame"]]).mean()
            assert own < 4 and nxt > 4 * own + 10, (clip["file"], own, nxt)
        assert abs(clip["duration"] - clip["planned_duration"]) <= clip["duration_tolerance_s"]
        assert clip["within_tolerance"] is True
    return plan


def test_no_clip_holds_a_frame_of_the_next_shot(work, source, tmp_path):
    shots = vf.load_scenes(vf.scenes_path(work / "state", KEY))["shots"]
    assert any(s["end_frame"] == SHOT_FRAMES for s in shots), shots   # the known cut at 4 s
    source_frames = frames_of(source)
    assert len(source_frames) == 2 * SHOT_FRAMES
    for mode in ([], ["--reencode"]):
        out = tmp_path / f"out{len(mode)}"
        proc = run_cli("video", "cut", work / "state", out, "--no-progress", *mode)
        assert "failed 0, outside tolerance 0" in proc.stdout
        plan = check_clips_end_in_their_shot(work, out, source_frames)
        assert plan["version"] == vf.PLAN_VERSION and plan["mode"] == (
            "reencode" if mode else "copy")
        # a copy whose keyframe lies in the previous shot is re-encoded
        key_times = [float(t.split(",")[0]) for t in subprocess.run(
            ["ffprobe", "-v", "error", "-skip_frame", "nokey", "-select_streams", "v:0",
             "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(source)],
            capture_output=True, text=True, check=True).stdout.split()]
        want = ["reencode" if mode or max(k for k in key_times if k <= c["start"] + 1e-3)
                < shots[c["shot"]]["start"] - 1e-3 else "copy" for c in plan["clips"]]
        assert [c["mode"] for c in plan["clips"]] == want
        assert mode or want.count("copy") >= 2
        assert mode or f"{want.count('reencode')} re-encoded, their keyframe lying in the " \
            "previous shot" in proc.stdout
    # a plain `-c copy -t` of the 4 s shot holds 102 frames: what the copy cut avoids
    naive = tmp_path / "naive.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-t", "4.0", "-c", "copy",
                    str(naive)], check=True)
    assert clip_frames(naive) > SHOT_FRAMES


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\x00" * 64)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    Recorder.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_or_unstaged_path_in_tracks_never_reaches_ffmpeg(work, http_server):
    from facesets.steps.video import run_media

    tracks_path = work / "state" / vf.TRACKS_FILE
    good = json.loads(tracks_path.read_text())
    for n, video in enumerate((f"{http_server}/exfil.mp4", f"{work}/videos/other.mp4",
                               "/etc/passwd")):
        if video.endswith("other.mp4"):
            shutil.copy2(work / "videos" / f"{KEY}.mp4", video)   # a real, unstaged video
        bad = json.loads(json.dumps(good))
        bad["segments"][1]["video"] = video
        tracks_path.write_text(json.dumps(bad))
        proc = run_cli("video", "cut", work / "state", work / f"out{n}", check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"error: {tracks_path}: segments[1].video {video!r} is not the video `video "
            f"scenes` staged as '{KEY}'; re-run `video merge`"]
        assert not (work / f"out{n}" / vf.PLAN_FILE).exists()
    # the one helper every ffmpeg/ffprobe call goes through refuses anything but a local file
    with pytest.raises(OSError, match="not a local video file"):
        run_media("ffprobe", f"{http_server}/exfil.mp4")
    # a staged "video" that is a playlist of network segments: ffmpeg gets file: only
    playlist = work / "videos" / "playlist.mp4"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n"
                        f"{http_server}/exfil.ts\n#EXT-X-ENDLIST\n")
    scenes = vf.load_scenes(vf.scenes_path(work / "state", KEY))
    st = playlist.stat()
    vf.write_scenes(work / "state", vf.scenes_doc(
        str(playlist), "playlist", st.st_size, st.st_mtime_ns, scenes["detector"],
        shots=[{"start": 0.0, "end": 4.0, "start_frame": 0, "end_frame": 100}], fps=25.0,
        frames=100, duration=4.0))
    bad = json.loads(json.dumps(good))
    bad["tracks"][0]["key"] = "playlist"
    bad["segments"] = [dict(bad["segments"][0], key="playlist", video=str(playlist))]
    tracks_path.write_text(json.dumps(bad))
    proc = run_cli("video", "cut", work / "state", work / "outp", "--no-progress", check=False)
    assert proc.returncode == 2 and "failed 1" in proc.stdout
    assert not list((work / "outp").rglob("*.mp4*"))
    assert Recorder.hits == []


def test_nan_in_tracks_never_reaches_the_plan(work):
    tracks_path = work / "state" / vf.TRACKS_FILE
    doc = json.loads(tracks_path.read_text())
    doc["segments"][0]["gates"]["pass_ratio"] = float("nan")
    tracks_path.write_text(json.dumps(doc))          # Python writes NaN as a bare NaN
    assert "NaN" in tracks_path.read_text()
    proc = run_cli("video", "cut", work / "state", work / "out", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tracks_path}: segments[0].gates.pass_ratio nan is not a finite number; "
        "re-run `video merge`"]
    assert not (work / "out" / vf.PLAN_FILE).exists()
    doc["segments"][0]["gates"]["pass_ratio"] = 1.0
    tracks_path.write_text(json.dumps(doc))
    run_cli("video", "cut", work / "state", work / "out", "--no-progress", "--write-sidecar")

    def refuse(constant):
        raise ValueError(f"{constant} in a written file")
    for path in [work / "out" / vf.PLAN_FILE, *(work / "out" / KEY).glob("*.json")]:
        json.loads(path.read_text(), parse_constant=refuse)


def test_two_cuts_at_once_the_second_is_refused_and_no_clip_is_corrupt(work, source):
    cmd = [sys.executable, str(Path(__file__).parent.parent / "sort_faces.py"), "video", "cut",
           str(work / "state"), str(work / "out"), "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(120), *p.communicate()) for p in (first, second)]
    assert sorted(r[0] for r in results) == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "is in use by pid" in loser[2] and len(loser[2].strip().splitlines()) == 1
    plan = check_clips_end_in_their_shot(work, work / "out", frames_of(source))
    again = run_cli("video", "cut", work / "state", work / "out", "--no-progress")
    assert f"already there {len(plan['clips'])}, failed 0" in again.stdout
    assert not [p for p in (work / "out").rglob("*") if is_leftover(p.name)
                or p.name.endswith(".partial")]
    assert not (work / ".out.facesets.lock").exists()


def test_a_truncated_clip_from_ffmpeg_exiting_0_is_never_kept(work, tmp_path):
    """ffmpeg that exits 0 on a half-written clip (a full disk): the clip is checked before
    its rename, refused, and a later run with a working ffmpeg cuts it."""
    fake = tmp_path / "bin"
    fake.mkdir()
    real = shutil.which("ffmpeg")
    (fake / "ffmpeg").write_text(
        f"#!{sys.executable}\nimport os, subprocess, sys\n"
        f"rc = subprocess.run([{real!r}, *sys.argv[1:]]).returncode\n"
        "out = sys.argv[-1].removeprefix('file:')\n"
        "if rc == 0 and os.path.isfile(out):\n"
        "    os.truncate(out, os.path.getsize(out) // 2)\n"
        "sys.exit(0)\n")
    (fake / "ffmpeg").chmod(0o755)
    os.symlink(shutil.which("ffprobe"), fake / "ffprobe")
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    proc = run_cli("video", "cut", work / "state", work / "out", "--no-progress",
                   check=False, env=env)
    n = len(vf.load_tracks(work / "state")["segments"])
    assert proc.returncode == 2
    assert f"cut now 0, already there 0, failed {n}" in proc.stdout
    assert "does not decode" in proc.stderr or "cut short" in proc.stderr
    assert vf.load_plan(work / "out" / vf.PLAN_FILE)["clips"] == []
    assert not [p for p in (work / "out").rglob("*") if p.is_file() and p.name != "plan.json"]
    ok = run_cli("video", "cut", work / "state", work / "out", "--no-progress")
    assert f"cut now {n}, already there 0, failed 0" in ok.stdout


def _can_mount_tmpfs(where: Path) -> bool:
    """Whether this process may mount a tmpfs in a mount namespace of its own (root, Linux)."""
    if not shutil.which("unshare"):
        return False
    where.mkdir(exist_ok=True)
    return subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount -t tmpfs -o size=64k tmpfs '{where}'"],
                          capture_output=True).returncode == 0


def test_a_full_disk_leaves_only_whole_clips(work, tmp_path):
    """OUT on a real, too small file system (a tmpfs in a private mount namespace): ffmpeg
    runs out of space and exits 0 on a broken clip (seen with ffmpeg 5.1); no broken clip is
    kept, each one that is kept is the one a roomy disk gets, the plan lists exactly those."""
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("cannot mount a tmpfs here (needs root and unshare)")
    run_cli("video", "cut", work / "state", work / "roomy", "--no-progress")
    roomy = {c["file"]: c for c in vf.load_plan(work / "roomy" / vf.PLAN_FILE)["clips"]}
    size = sum(c["size"] for c in roomy.values()) // 2 + 8192
    out, kept = work / "out", tmp_path / "kept"
    out.mkdir()
    cut = (f"{sys.executable} {Path(__file__).parent.parent / 'sort_faces.py'} video cut "
           f"'{work / 'state'}' '{out}' --no-progress")
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs '{out}' && {cut}; rc=$?; "
                           f"cp -a '{out}' '{kept}'; exit $rc"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "failed 0" not in proc.stdout and "not cut:" in proc.stderr
    on_disk = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
    plan = vf.load_plan(kept / vf.PLAN_FILE)
    assert on_disk == sorted([vf.PLAN_FILE, *(c["file"] for c in plan["clips"])])
    assert 0 < len(plan["clips"]) < len(roomy)
    for clip in plan["clips"]:
        assert (kept / clip["file"]).read_bytes() == (work / "roomy" / clip["file"]).read_bytes()
        assert decodes(kept / clip["file"])


def test_a_rerun_rechecks_the_clips_already_there(work, source):
    run_cli("video", "cut", work / "state", work / "out", "--no-progress")
    plan = vf.load_plan(work / "out" / vf.PLAN_FILE)
    clips = [work / "out" / c["file"] for c in plan["clips"]]
    assert all(c["size"] == p.stat().st_size for c, p in zip(plan["clips"], clips))
    # truncated in place: its size no longer matches the plan's, it fails the decode check
    os.truncate(clips[0], clips[0].stat().st_size // 2)
    again = run_cli("video", "cut", work / "state", work / "out", "--no-progress")
    assert (f"cut now 1 (1 replacing a clip that failed its check), already there "
            f"{len(clips) - 1}, failed 0") in again.stdout
    # no plan to compare with: each clip is decoded whole; one spoiled at the same size
    (work / "out" / vf.PLAN_FILE).unlink()
    data = bytearray(clips[-1].read_bytes())
    data[len(data) // 3: len(data) // 3 + 4000] = os.urandom(4000)
    clips[-1].write_bytes(bytes(data))
    third = run_cli("video", "cut", work / "state", work / "out", "--no-progress")
    assert "cut now 1 (1 replacing" in third.stdout
    check_clips_end_in_their_shot(work, work / "out", frames_of(source))


@pytest.mark.unit
def test_copy_window_ends_before_frames_shown_after_the_end():
    """Packets as x264 lays them out (B-frames: decode order differs from display order):
    the copy keeps only a decode-order run shown before the end, -t lies inside that gap."""
    from facesets.steps.video import Packet, copy_window

    step = 0.04
    # decode order I0 P3 B1 B2 P6 B4 B5 | I8(key) P11 B9 B10 P12 (frame 7 was dropped)
    order = [0, 3, 1, 2, 6, 4, 5, 8, 11, 9, 10, 12]
    packets = [Packet(round(k * step, 4), round((i - 2) * step, 4), step, k in (0, 8))
               for i, k in enumerate(order)]
    w = copy_window(packets, 0.0, 0.2)          # the shot ends before frame 5 (t = 0.2)
    assert (w.cut_start, w.frames) == (0.0, 4)  # I0 P3 B1 B2; P6 (shown after) stops it
    kept_dts, stop_dts = packets[3].dts, packets[4].dts
    assert kept_dts < w.seek + w.length < stop_dts
    assert w.cut_end == pytest.approx(4 * step)
    w = copy_window(packets, 0.33, 0.45)        # starts at the keyframe I8 (0.32 s)
    assert w.cut_start == pytest.approx(0.32) and w.frames == 4   # I8 P11 B9 B10; P12 stops
    w = copy_window(packets, 0.33, 9.0)         # to the end of the video
    assert w.frames == 5 and w.length == pytest.approx(9.0 - w.seek)


def test_a_clip_folder_that_is_a_foreign_symlink_is_not_written_through(work, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (work / "out").mkdir()
    os.symlink(elsewhere, work / "out" / KEY)
    proc = run_cli("video", "cut", work / "state", work / "out", "--no-progress", check=False)
    n = len(vf.load_tracks(work / "state")["segments"])
    assert proc.returncode == 2 and f"failed {n}" in proc.stdout
    assert "is a symlink face-sets did not make" in proc.stderr
    assert list(elsewhere.iterdir()) == []


# ---- kills ---------------------------------------------------------------------------------
_SOURCE: list[Path] = []   # the module's source video, for the scenario's build
SCENARIO = Scenario("video-cut", lambda w: build_state(w, _SOURCE[0]),
                    lambda w: ["video", "cut", "state", "out", "--no-progress",
                               "--write-sidecar"])


@pytest.fixture(scope="module")
def harness(source, tmp_path_factory) -> KillHarness:
    """The scenario prepared and its uninterrupted reference run, once for the kill tests."""
    _SOURCE[:] = [source]
    h = KillHarness(SCENARIO, tmp_path_factory.mktemp("kill"))
    h.prepare()
    assert h.run_reference() > 0
    assert not h.reference_leftovers()
    return h


def ffmpeg_children(w: Path, tools=frozenset({"ffmpeg", "ffprobe"})) -> list[int]:
    """Processes whose command line names the work folder and runs ffmpeg or ffprobe (as
    itself, or as a script given to an interpreter): the children of a cut."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = {Path(a.decode(errors="replace")).name for a in argv[:2]}
        if any(str(w).encode() in a for a in argv) and names & tools:
            pids.append(int(entry.name))
    return pids


def gone_within(w: Path, seconds: float) -> list[int]:
    """The cut's children still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while ffmpeg_children(w) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ffmpeg_children(w)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux")
def test_a_killed_or_interrupted_cut_leaves_no_ffmpeg_running(work, tmp_path):
    """An ffmpeg that takes 30 s (it sleeps, then runs the real one): Ctrl-C or kill -9 of
    the cut ends it at once, it does not write on."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffmpeg").write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                                 f"time.sleep(30)\nos.execv({shutil.which('ffmpeg')!r}, "
                                 "sys.argv)\n")
    (fake / "ffmpeg").chmod(0o755)
    os.symlink(shutil.which("ffprobe"), fake / "ffprobe")
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, str(Path(__file__).parent.parent / "sort_faces.py"), "video", "cut",
           str(work / "state"), str(work / "out"), "--no-progress"]
    for sig, rc in ((signal.SIGINT, 130), (signal.SIGKILL, KILLED)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not ffmpeg_children(work, {"ffmpeg"}):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        assert proc.wait(30) == rc, proc.stderr.read()
        left = gone_within(work, 2.0)
        for pid in left:   # clean up before failing: the fake sleeps 30 s
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"an ffmpeg outlived the cut ({sig.name})"
        assert not list((work / "out").rglob("*.partial")) or sig == signal.SIGKILL
    rerun = run_cli("video", "cut", work / "state", work / "out", "--no-progress")
    assert "failed 0" in rerun.stdout
    assert not list((work / "out").rglob("*.partial"))


def test_kill_at_each_kind_of_commit_then_rerun_equals_an_uninterrupted_run(harness):
    results = [harness.try_kill(k) for k in sample_points(harness.commits, 4)]
    assert any(r.killed for r in results)
    bad = [r for r in results if r.outcome != "equal"]
    assert not bad, "\n".join(r.line() for r in bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_a_random_moment_leaves_no_ffmpeg_and_a_rerun_equals(harness, seed):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESETS_KILL")}
    delay = random.Random(seed).uniform(0.0, 1.5)
    for _ in range(5):   # a cut that finished before its kill is tried again, killed sooner
        harness.reset()
        proc = subprocess.Popen([sys.executable,
                                 str(Path(__file__).parent.parent / "sort_faces.py"),
                                 *SCENARIO.argv(harness.w)], cwd=harness.w, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until ffmpeg or ffprobe runs, then a little more (seeded): killed mid-clip
        deadline = time.monotonic() + 60
        while not ffmpeg_children(harness.w) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            break
        delay /= 3
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == KILLED
    assert gone_within(harness.w, 1.0) == [], "an ffmpeg outlived the killed cut"
    again = harness.run(tag=f"random{seed}")
    assert again.rc == 0, again.stderr
    assert compare(harness.reference, state(harness.w, SCENARIO)) == []
    for clip in vf.load_plan(harness.w / "out" / vf.PLAN_FILE)["clips"]:
        assert decodes(harness.w / "out" / clip["file"])
