"""Video targets: shots, sampled faces, tracks, quality segments, clean cuts.

  scenes   every video under a folder -> its shots (PySceneDetect), one file per video;
           resumable (a video whose size and mtime are unchanged is not scanned again);
           an empty or unreadable video is recorded with the reason and skipped.
  stage    one queue item per shot (formats/queue.py, kind "video").
  worker   ``VideoFaceJob``: decode the shot's frames at ``fps`` (sources/video.py), detect and
           embed every face with the embed backend (core/analyze.py), append one JSON Lines
           record per shot (a killed worker resumes at the first shot not recorded).
  track    within a shot, link faces frame to frame (box IoU and embedding distance), a track
           stays open across a detection gap of up to ``gap`` s; segments: tracks whose face
           passes the gates on >= ``min_pass`` of its sampled frames, ``min_len``..``max_len``
           s (longer ones split); optional identity filter (``--faceset``).
  cut      ffmpeg: one UUID-named clip per segment in OUT/<key>/, and OUT/plan.json.
Defaults live here; the command reads them. Importable with the worker's requirements (no
scenedetect, scipy or ffmpeg until a step needs them).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..backends.base import DEFAULT_DET_SIZE
from ..formats import video as vf
from ..formats.queue import FAILURES_LOG, KIND_VIDEO, JsonlAppender, load_queue, new_queue, \
    read_jsonl, write_queue
from ..io.fsutil import atomic_write_json, commit_point, fsync_dir, output_lock, \
    remove_temp_files
from ..runtime.jobs import DEFAULT_PREFETCH_WORKERS, ERROR, NOFACE, OK, prefetch_stream
from ..runtime.progress import progress_bar
from ..runtime.worker import WorkerJob, WorkerParams, WorkItem, map_param_path
from ..sources.video import iter_frames, list_videos, sample_times

DEFAULT_DETECTOR = "adaptive"
DETECTORS = ("adaptive", "content")
DEFAULT_FPS = 2.0
# tracking
MIN_IOU = 0.3        # a box overlapping the track's last box this much may continue it...
MAX_GAP_S = 2.0      # ...within this many seconds (a detection gap up to this merges)
# segment gates
MAX_YAW = 75.0       # |yaw| in degrees, where the pack has a pose model
MIN_FACE_SHORT = 80.0
MIN_DET_SCORE = 0.5
MIN_PASS = 0.7       # share of the track's sampled frames passing every gate
MIN_LEN_S = 1.0
MAX_LEN_S = 120.0
# worker: decoded frames held ahead of the model (full-size frames: 8 x 6 MB at 1080p)
PREFETCH_FRAMES = 8
DURATION_SLACK_S = 0.05   # an audio frame: how far a clip's audio may outlast its video
CLIP_UUID_NS = uuid.UUID("6f1c2a4e-7d1b-4c55-9a53-0b1e5a2b7c11")   # clip names (uuid5)

FFMPEG_MISSING = ("{tool} not found: install FFmpeg (Debian/Ubuntu: `sudo apt-get install -y "
                  "ffmpeg`; macOS: `brew install ffmpeg`; Windows: `winget install ffmpeg`)")


def need_tool(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise FileNotFoundError(FFMPEG_MISSING.format(tool=tool))
    return path


# ---- scenes --------------------------------------------------------------------------------
@dataclass
class ScenesSummary:
    videos: int = 0
    scanned: int = 0
    unchanged: int = 0
    shots: int = 0
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"videos {self.videos}: scanned {self.scanned}, unchanged {self.unchanged}, "
                f"skipped {len(self.skipped)}; shots {self.shots}")


def _detector(name: str):
    from scenedetect import AdaptiveDetector, ContentDetector

    if name not in DETECTORS:
        raise ValueError(f"unknown --detector {name!r}; one of {', '.join(DETECTORS)}")
    return AdaptiveDetector() if name == "adaptive" else ContentDetector()


def video_shots(path: str, detector: str) -> dict:
    """Shots of one video: {shots, fps, frames, duration}; OSError when it cannot be read."""
    import logging

    from scenedetect import detect, open_video

    logging.getLogger("pyscenedetect").setLevel(logging.CRITICAL)
    try:
        video = open_video(path)
        fps, frames = float(video.frame_rate), int(video.duration.frame_num)
        duration = float(video.duration.seconds)
        scenes = detect(path, _detector(detector))
    except OSError:
        raise
    except Exception as exc:   # PySceneDetect's own errors: not a readable video
        raise OSError(f"{type(exc).__name__}: {exc}") from None
    if frames <= 0 or duration <= 0:
        raise OSError("no frames")
    shots = [{"start": float(a.seconds), "end": float(b.seconds),
              "start_frame": int(a.frame_num), "end_frame": int(b.frame_num)}
             for a, b in scenes] or [{"start": 0.0, "end": duration, "start_frame": 0,
                                      "end_frame": frames}]
    return {"shots": shots, "fps": fps, "frames": frames, "duration": duration}


def scan_scenes(video_dir: str, state: str, detector: str = DEFAULT_DETECTOR,
                progress: bool = True) -> ScenesSummary:
    """Shots of every video under ``video_dir`` into ``state``/scenes/<key>.json."""
    _detector(detector)
    videos = list_videos(video_dir)
    summary = ScenesSummary(videos=len(videos))
    root = video_dir if os.path.isdir(video_dir) else os.path.dirname(video_dir)
    keys: dict[str, str] = {}
    for path in progress_bar(videos, desc="scenes", unit="video", disable=not progress):
        key = vf.video_key(root, path)
        if key in keys:
            raise ValueError(f"{path} and {keys[key]} map to the same name {key!r}; rename one")
        keys[key] = path
        st = os.stat(path)
        out = vf.scenes_path(state, key)
        if out.is_file():
            old = vf.load_scenes(out)
            if (old["video"], old["size"], old["mtime_ns"], old["detector"]) == \
                    (path, st.st_size, st.st_mtime_ns, detector):
                summary.unchanged += 1
                summary.shots += len(old["shots"])
                if old["status"] == "error":
                    summary.skipped.append(f"{path}: {old['error']}")
                continue
        if st.st_size == 0:
            doc = vf.scenes_doc(path, key, 0, st.st_mtime_ns, detector, error="empty file")
        else:
            try:
                doc = vf.scenes_doc(path, key, st.st_size, st.st_mtime_ns, detector,
                                    **video_shots(path, detector))
            except OSError as exc:
                doc = vf.scenes_doc(path, key, st.st_size, st.st_mtime_ns, detector,
                                    error=f"not a readable video ({exc})"[:300])
        if doc["status"] == "error":
            summary.skipped.append(f"{path}: {doc['error']}")
        summary.scanned += 1
        summary.shots += len(doc["shots"])
        vf.write_scenes(state, doc)
    return summary


# ---- stage ---------------------------------------------------------------------------------
def stage_video_queue(state: str, fps: float = DEFAULT_FPS, model: str | None = None,
                      model_root: str | None = None,
                      det_size: int = DEFAULT_DET_SIZE) -> tuple[int, int]:
    """Write STATE/queue.json: one item per shot of every readable video. Returns (videos,
    shots)."""
    if not 0 < fps <= 120:
        raise ValueError(f"--fps {fps} is not in 0..120")
    docs = [d for d in vf.all_scenes(state) if d["status"] == "ok"]
    items = [{"id": f"{d['key']}#{n}", "path": d["video"], "key": d["key"], "shot": n,
              "size": d["size"], "start": s["start"], "end": s["end"]}
             for d in docs for n, s in enumerate(d["shots"])]
    src = os.path.commonpath([d["video"] for d in docs]) if docs else os.path.abspath(state)
    if docs and len(docs) == 1:
        src = os.path.dirname(docs[0]["video"])
    params = {"model": model,
              "model_root": os.path.abspath(os.path.expanduser(model_root)) if model_root
              else None, "det_size": int(det_size), "src": src, "fps": float(fps)}
    path = Path(state) / vf.QUEUE_FILE
    if path.is_file():
        old = load_queue(path, KIND_VIDEO)
        if old["params"] == params and old["items"] == items:
            return len(docs), len(items)   # unchanged: keep it (the worker's results answer it)
    write_queue(path, new_queue(KIND_VIDEO, params, items))
    return len(docs), len(items)


# ---- worker --------------------------------------------------------------------------------
class VideoFaceJob(WorkerJob):
    """Detect and embed the faces of each shot's sampled frames; one record per shot."""

    name = "video worker"
    unit = "shot"

    def __init__(self, queue: dict, out: str, mapper, providers: str | None = None,
                 model_root: str | None = None, workers: int = DEFAULT_PREFETCH_WORKERS):
        self.queue, self.params = queue, queue["params"]
        self.workers = int(workers)
        self.out = Path(out)
        self.log_path = self.out / vf.FRAMES_LOG
        self.mapper, self.providers = mapper, providers
        self.model_root = model_root or map_param_path(self.params.get("model_root"), mapper)
        self.appender: JsonlAppender | None = None
        self.frames = self.faces = 0
        self.timing = {"decode": 0.0, "detect": 0.0}

    def done_ids(self) -> set[str]:
        records, _ = read_jsonl(self.log_path)
        items = {it["id"]: it for it in self.queue["items"]}
        return {r["id"] for r in records
                if isinstance(r.get("id"), str) and r["id"] in items
                and vf.answers(r, items[r["id"]])}

    def start(self) -> None:
        from ..backends import load_backend

        self.backend = load_backend(map_param_path(self.params.get("model"), self.mapper),
                                    self.model_root, self.providers,
                                    int(self.params.get("det_size") or DEFAULT_DET_SIZE))
        meta = dict(self.backend.describe(), providers=",".join(self.backend.providers))
        model_file = self.out / vf.MODEL_FILE
        if model_file.is_file():
            held = vf.load_model(model_file)
            if held["model_id"] != meta["model_id"]:
                raise ValueError(f"{self.out}: holds results of model {held.get('model_id')}, "
                                 f"not {meta['model_id']}; use an empty results folder")
        else:
            atomic_write_json(model_file, meta)
        self.appender = JsonlAppender(self.log_path)

    def _decoded_frames(self, item: WorkItem):
        """``(t wanted, the frame ready for detection, decode seconds)`` for each sampled
        frame of one shot, decoded in order (on the prefetch thread when overlapped)."""
        from ..core.analyze import LoadedPhoto, detector_input

        times = sample_times(item.fields["start"], item.fields["end"], float(self.params["fps"]))
        t0 = time.perf_counter()
        for want, _, image in iter_frames(item.local, times):
            h, w = image.shape[:2]
            photo = LoadedPhoto(path=item.local, sha256="", width=w, height=h, image=image,
                                det_image=detector_input(image, self.backend.det_size))
            t1 = time.perf_counter()
            yield want, photo, t1 - t0
            t0 = time.perf_counter()

    def shot_faces(self, decoded) -> list[dict]:
        from ..core.analyze import analyze_photo

        frames = []
        for want, photo, decode_s in decoded:
            self.timing["decode"] += decode_s
            t1 = time.perf_counter()
            result = analyze_photo(self.backend, photo)
            faces = [vf.face_entry(af.face.bbox, af.face.det_score, af.face_short, af.blur,
                                   None if af.face.pose is None else af.face.pose[1],
                                   af.face.embedding) for af in result.faces]
            frames.append({"t": want, "faces": faces})
            self.faces += len(faces)
            self.timing["detect"] += time.perf_counter() - t1
        self.frames += len(frames)
        return frames

    def process(self, items: Iterator[WorkItem]):
        # the next frames (of this shot and the next ones) are decoded on a thread while
        # the model looks at this one; --workers 0: the serial loop
        for it, decoded in prefetch_stream(items, self._decoded_frames, PREFETCH_FRAMES,
                                           background=self.workers > 0):
            f = it.fields
            before = dict(self.timing)
            try:
                frames = self.shot_faces(decoded)
                error = "" if frames else "no frame could be decoded"
            except OSError as exc:
                frames, error = [], str(exc)
            timing = {k: self.timing[k] - before[k] for k in self.timing}
            self.appender.add(vf.frames_record(f, frames, error, timing))
            yield it, (ERROR if error else OK if any(fr["faces"] for fr in frames)
                       else NOFACE), error

    def flush(self) -> None:
        if self.appender is not None:
            self.appender.flush()

    def on_interrupt(self) -> None:
        pass   # every added record is whole

    def extra(self) -> dict:
        return {"frames": self.frames, "faces": self.faces}


def make_video_job(queue: dict, params: WorkerParams, mapper):
    out = Path(params.results)
    out.mkdir(parents=True, exist_ok=True)
    return (VideoFaceJob(queue, str(out), mapper, params.providers, params.model_root,
                         params.workers),
            out / ".worker.lock", out / FAILURES_LOG)


def run_worker_inprocess(state: str, providers: str | None = None, flush_every: int = 5,
                         progress: bool = True):
    """The worker's job in this process (what work/video_face_worker.py runs)."""
    from ..runtime.pathmap import PathMapper
    from ..runtime.worker import run_job, work_items

    queue = load_queue(Path(state) / vf.QUEUE_FILE, KIND_VIDEO)
    out = Path(state) / vf.FACES_DIR
    out.mkdir(parents=True, exist_ok=True)
    job = VideoFaceJob(queue, str(out), PathMapper(None, []), providers)
    summary = run_job(job, work_items(queue, PathMapper(None, [])), out / FAILURES_LOG,
                      flush_every, progress)
    return summary, job


# ---- track + segments ----------------------------------------------------------------------
def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def link_tracks(frames: list[dict], threshold: float, gap: float = MAX_GAP_S,
                min_iou: float = MIN_IOU) -> list[list[tuple[float, dict]]]:
    """Tracks of one shot: lists of (t, face). A face continues an open track (last seen
    within ``gap`` s) when its embedding is within cosine distance ``threshold`` of the
    track's mean and either the boxes overlap (IoU >= ``min_iou``) or the distance alone is
    within ``threshold`` (a person who moved); pairs are assigned by the Hungarian method on
    distance minus IoU, so two people never swap tracks. A face without a match starts one."""
    from scipy.optimize import linear_sum_assignment

    tracks: list[dict] = []
    for fr in sorted(frames, key=lambda f: f["t"]):
        t, faces = fr["t"], fr["faces"]
        open_ = [k for k, tr in enumerate(tracks) if t - tr["last_t"] <= gap + 1e-6]
        embs = [_unit(f["embedding"]) for f in faces]
        cost = np.full((len(open_), len(faces)), np.inf)
        for a, k in enumerate(open_):
            tr = tracks[k]
            for b, face in enumerate(faces):
                dist = 1.0 - float(np.dot(_unit(tr["sum"]), embs[b]))
                if dist > threshold:
                    continue   # another person: never linked, however the boxes overlap
                ov = iou(tr["items"][-1][1]["bbox"], face["bbox"])
                cost[a, b] = dist - ov if ov >= min_iou else dist
        used = set()
        if open_ and faces:
            finite = np.where(np.isfinite(cost), cost, 1e6)
            for a, b in zip(*linear_sum_assignment(finite)):
                if np.isfinite(cost[a, b]):
                    tr = tracks[open_[a]]
                    tr["items"].append((t, faces[b]))
                    tr["sum"] = tr["sum"] + embs[b]
                    tr["last_t"] = t
                    used.add(b)
        for b, face in enumerate(faces):
            if b not in used:
                tracks.append({"items": [(t, face)], "sum": embs[b].copy(), "last_t": t})
    return [tr["items"] for tr in tracks]


def face_gates(face: dict, max_yaw: float = MAX_YAW, min_short: float = MIN_FACE_SHORT,
               min_det: float = MIN_DET_SCORE) -> dict:
    """Which gates a face passes; a missing yaw (a pack without pose model) is not judged
    (``yaw`` None) and does not fail the face."""
    yaw = face.get("yaw")
    return {"yaw": None if yaw is None else abs(yaw) <= max_yaw,
            "face_short": face["face_short"] >= min_short,
            "det_score": face["det_score"] >= min_det}


@dataclass(frozen=True)
class TrackParams:
    """`video track`'s gates and linking; the command reads its defaults from here."""
    threshold: float
    fps: float = DEFAULT_FPS
    gap: float = MAX_GAP_S
    max_yaw: float = MAX_YAW
    min_face_short: float = MIN_FACE_SHORT
    min_det_score: float = MIN_DET_SCORE
    min_pass: float = MIN_PASS
    min_len: float = MIN_LEN_S
    max_len: float = MAX_LEN_S
    faceset_threshold: float | None = None


def split_span(start: float, end: float, max_len: float) -> list[tuple[float, float]]:
    """[start, end] in equal parts of at most ``max_len`` s."""
    n = max(1, int(np.ceil((end - start) / max_len - 1e-9)))
    step = (end - start) / n
    return [(round(start + i * step, 4), round(start + (i + 1) * step, 4)) for i in range(n)]


def track_segments(state: str, p: TrackParams, identity: np.ndarray | None = None,
                   identity_name: str = "") -> dict:
    """Tracks and segments of every shot the worker recorded -> STATE/tracks.json."""
    queue = load_queue(Path(state) / vf.QUEUE_FILE, KIND_VIDEO)
    log = Path(state) / vf.FACES_DIR / vf.FRAMES_LOG
    records, _ = read_jsonl(log, strict=True)
    records = vf.current_records(records, queue, log)
    items = {it["id"]: it for it in queue["items"]}
    missing = len(items) - len(records)
    tracks, segments = [], []
    step = 1.0 / p.fps
    for rec in sorted(records, key=lambda r: (r["key"], r["shot"])):
        if rec["status"] != "ok":
            continue
        it = items[rec["id"]]
        sampled = [fr["t"] for fr in rec["frames"]]
        for n, tr in enumerate(link_tracks(rec["frames"], p.threshold, p.gap)):
            tid = f"{rec['key']}#{rec['shot']}#{n}"
            frames = []
            for t, face in tr:
                g = face_gates(face, p.max_yaw, p.min_face_short, p.min_det_score)
                frames.append({"t": t, "bbox": face["bbox"], "det_score": face["det_score"],
                               "face_short": face["face_short"], "yaw": face["yaw"],
                               "pass": all(v is not False for v in g.values())})
            first, last = tr[0][0], tr[-1][0]
            span = [t for t in sampled if first - 1e-6 <= t <= last + 1e-6]
            ratio = sum(f["pass"] for f in frames) / max(1, len(span))
            centroid = _unit(sum(_unit(f["embedding"]) for _, f in tr))
            tracks.append({"id": tid, "key": rec["key"], "shot": rec["shot"],
                           "video": it["path"], "frames": frames,
                           "pass_ratio": round(ratio, 4)})
            start = max(it["start"], first - step / 2)
            end = min(it["end"], last + step / 2)
            gates = {"pass_ratio": round(ratio, 4), "min_pass": p.min_pass,
                     "yaw_checked": any(f["yaw"] is not None for f in frames),
                     "max_yaw": p.max_yaw, "min_face_short": p.min_face_short,
                     "min_det_score": p.min_det_score}
            if ratio < p.min_pass or end - start < p.min_len:
                continue
            if identity is not None:
                if len(identity) != len(centroid):
                    raise ValueError(f"--faceset {identity_name}: its centroid has "
                                     f"{len(identity)} values, this model's embeddings "
                                     f"{len(centroid)}; use a faceset of the same model")
                dist = 1.0 - float(np.dot(centroid, identity))
                gates.update(faceset=identity_name, faceset_distance=round(dist, 4))
                if dist > p.faceset_threshold:
                    continue
            for a, b in split_span(start, end, p.max_len):
                if b - a >= min(p.min_len, end - start) - 1e-6:
                    segments.append({"track": tid, "key": rec["key"], "video": it["path"],
                                     "shot": rec["shot"], "start": a, "end": b,
                                     "pass_ratio": round(ratio, 4), "gates": gates})
    params = dict(vars(p), shots_recorded=len(records), shots_missing=missing)
    doc = vf.tracks_doc(params, tracks, segments)
    vf.write_tracks(state, doc)
    return doc


def faceset_identity(folder: str, model_id: str | None = None) -> tuple[np.ndarray, str]:
    """The identity of a swap-ready faceset folder (export-swap's OUT/faceset_NNN): the
    unit centroid its manifest records, and the faceset's name. Refused when the faceset
    was made by another model than ``model_id`` (the worker's)."""
    from ..formats.manifest import MANIFEST_FILE, SWAP_FACESET_MANIFEST, centroid_of, \
        load_manifest

    path = Path(folder) / MANIFEST_FILE
    man = load_manifest(path, SWAP_FACESET_MANIFEST)
    if model_id and man.get("model_id") and man["model_id"] != model_id:
        raise ValueError(f"{path}: made with model {man['model_id']}, the video faces with "
                         f"{model_id}; use a faceset of the same model")
    return centroid_of(man, path, None), Path(folder).name


# ---- ffmpeg / ffprobe: the one way to run them ---------------------------------------------
MEDIA_TIMEOUT_S = 3600.0   # deadline of one ffmpeg / ffprobe run (one clip, one probe)
_PR_SET_PDEATHSIG = 1      # linux/prctl.h
_libc = None


def _die_with_parent():
    """A preexec_fn (Linux) that asks the kernel to SIGKILL the child when face-sets dies, so
    a killed `video cut` never leaves an ffmpeg writing on; None elsewhere."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:   # loaded before the fork: the child only calls it
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:   # the parent died before prctl took hold
            os._exit(1)
    return preexec


def run_media(tool: str, source: str, before: list[str] = (), after: list[str] = (),
              output: Path | None = None,
              timeout: float = MEDIA_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``ffmpeg`` or ``ffprobe`` on one local video; every call goes through here.

    ``source`` must be an absolute path to a file: it is given as ``file:<path>`` with only
    the ``file`` protocol allowed, so neither a URL nor a playlist or reference inside the
    file reaches the network. ``output`` likewise (``file:<path>``). The child dies with this
    process (Linux) and is killed on any exception here (a deadline, Ctrl-C)."""
    if not (os.path.isabs(source) and os.path.isfile(source)):
        raise OSError(f"{source}: not a local video file")
    argv = [need_tool(tool)]
    argv += ["-nostdin", "-hide_banner", "-v", "error"] if tool == "ffmpeg" else ["-v", "error"]
    argv += [*before, "-protocol_whitelist", "file", "-i", "file:" + source, *after]
    if output is not None:
        argv += ["-y", "file:" + os.path.abspath(output)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            preexec_fn=_die_with_parent())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise OSError(f"{source}: {tool} did not finish within {timeout:.0f} s") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# ---- cut -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Packet:
    """One video packet, in decode order: presentation and decode time, duration (s)."""
    pts: float
    dts: float
    dur: float
    key: bool


def video_packets(source: str) -> list[Packet]:
    """The video stream's packets in decode order (from the container: nothing is decoded)."""
    proc = run_media("ffprobe", source, ["-select_streams", "v:0", "-show_entries",
                                         "packet=pts_time,dts_time,duration_time,flags",
                                         "-of", "csv=p=0"])
    packets = []
    for line in proc.stdout.splitlines():
        parts = line.split(",")
        if len(parts) < 4:
            continue
        try:
            pts = float(parts[0])
        except ValueError:
            continue   # no presentation time: never shown
        dts = _number(parts[1], pts)
        dur = _number(parts[2], 0.0)
        if math.isfinite(pts) and math.isfinite(dts):
            packets.append(Packet(pts, dts, dur if math.isfinite(dur) else 0.0, "K" in parts[3]))
    return packets


def _number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def keyframes(source: str) -> list[float]:
    """Times of the video stream's keyframes."""
    return sorted(p.pts for p in video_packets(source) if p.key)


@dataclass(frozen=True)
class CutWindow:
    """What ffmpeg is asked for and what the clip must then hold: ``seek`` (-ss), ``length``
    (-t), the clip's first and last frame times ``cut_start``, ``cut_end`` (the end of its
    last frame) and the most video ``frames`` it may hold."""
    seek: float
    length: float
    cut_start: float
    cut_end: float
    frames: int


SEEK_PAST_S = 0.0005   # -ss this far past a keyframe's printed time (rounded to 1 us) still
                       # finds that keyframe and never the one before


def copy_window(packets: list[Packet], start: float, end: float) -> CutWindow:
    """A stream-copy cut of [start, end): it starts at the last keyframe at or before
    ``start`` and ends BEFORE ``end``. ffmpeg stops copying at the first packet whose decode
    time reaches -t; with B-frames a packet decoded before ``end`` can be shown after it (the
    next shot's first frames), so the clip keeps the longest run of packets, in decode order,
    all shown before ``end`` (any frame needs only packets decoded before it: the run
    decodes), and -t falls between that run's last packet and the next."""
    keys = [i for i, p in enumerate(packets) if p.key and p.pts <= start + 1e-3]
    first = keys[-1] if keys else 0
    cut_start = packets[first].pts if keys else 0.0
    seek = cut_start + SEEK_PAST_S if keys else 0.0
    kept, stop = [], None
    for i in range(first, len(packets)):
        if packets[i].pts >= end - 1e-6:
            stop = i
            break
        kept.append(packets[i])
    if not kept:
        return CutWindow(seek, 0.0, cut_start, cut_start, 0)
    step = _frame_step(packets)
    cut_end = max(p.pts + (p.dur or step) for p in kept)
    length = end - seek if stop is None else \
        (packets[stop - 1].dts + packets[stop].dts) / 2 - seek
    return CutWindow(seek, length, cut_start, min(cut_end, end), len(kept))


def reencode_window(packets: list[Packet], start: float, end: float) -> CutWindow:
    """A re-encoded cut: frame-exact [start, end), the source's frame times kept."""
    frames = sum(1 for p in packets if start - 1e-3 <= p.pts < end - 1e-6)
    return CutWindow(start, end - start, start, end, frames)


def _frame_step(packets: list[Packet]) -> float:
    steps = sorted(p.dur for p in packets if p.dur > 0)
    return steps[len(steps) // 2] if steps else 1 / 25


def duration_tolerance(fps: float) -> float:
    """How far a clip's duration may differ from the plan's: the cut's first and last frame
    (2 frames; 2 / 25 s when the rate is unknown) plus one audio frame (~0.05 s)."""
    return round(2.0 / (fps if fps > 0 else 25.0) + DURATION_SLACK_S, 4)


def clip_uuid(seg: dict) -> str:
    return str(uuid.uuid5(CLIP_UUID_NS, json.dumps(
        [seg["video"], seg["track"], seg["start"], seg["end"]])))


def probe_clip(path: Path) -> dict:
    """Decode a clip whole (ffprobe -count_frames): its video frames, duration, size, and
    ``problem`` ("" when it decodes without an error)."""
    proc = run_media("ffprobe", str(path), ["-count_frames"],
                     ["-show_entries", "stream=codec_type,nb_read_frames:format=duration",
                      "-of", "json"])
    info = {"frames": 0, "duration": None, "size": path.stat().st_size, "problem": ""}
    err = proc.stderr.strip()
    if proc.returncode != 0 or err:
        info["problem"] = f"does not decode ({(err or 'ffprobe failed').splitlines()[-1][:160]})"
        return info
    try:
        doc = json.loads(proc.stdout, parse_constant=lambda c: None)
        video = [s for s in doc.get("streams", []) if s.get("codec_type") == "video"]
        info["frames"] = int(video[0].get("nb_read_frames", 0)) if video else 0
        duration = float(doc.get("format", {}).get("duration"))
        info["duration"] = round(duration, 4) if math.isfinite(duration) else None
    except (ValueError, TypeError, AttributeError, IndexError):
        info["problem"] = "ffprobe's answer cannot be read"
    return info


def probe_duration(path: Path) -> float | None:
    """The container's duration (nothing decoded)."""
    proc = run_media("ffprobe", str(path), [], ["-show_entries", "format=duration", "-of",
                                                "default=nw=1:nk=1"])
    value = _number(proc.stdout.strip(), math.nan)
    return round(value, 4) if proc.returncode == 0 and math.isfinite(value) else None


def judge_clip(info: dict, clip: dict) -> str:
    """Why a probed clip cannot be kept ("" when it can): it must decode, hold video frames,
    none shown after the segment's end, and not be shorter than planned (truncated). Longer
    than planned beyond the tolerance it is kept and flagged (``within_tolerance``)."""
    if info["problem"]:
        return info["problem"]
    if info["frames"] <= 0:
        return "holds no video frame"
    if info["frames"] > clip["frames_max"]:
        return (f"holds {info['frames']} frames, only {clip['frames_max']} are shown before "
                f"the segment's end at {clip['end']} s (frames of the next shot)")
    if info["duration"] is None:
        return "has no duration"
    if info["duration"] < clip["planned_duration"] - clip["duration_tolerance_s"]:
        return (f"lasts {info['duration']:.3f} s, planned {clip['planned_duration']:.3f} s "
                f"+- {clip['duration_tolerance_s']} s: cut short")
    return ""


@dataclass
class CutSummary:
    clips: int = 0
    cut: int = 0
    kept: int = 0
    replaced: int = 0
    reencoded: int = 0   # copy mode: clips re-encoded as their keyframe lay in the previous shot
    failed: list[str] = field(default_factory=list)
    outside_tolerance: list[str] = field(default_factory=list)
    seconds_moved: float = 0.0

    def line(self) -> str:
        return (f"clips {self.clips}: cut now {self.cut}"
                + (f" ({self.replaced} replacing a clip that failed its check)"
                   if self.replaced else "")
                + f", already there {self.kept}, failed {len(self.failed)}, outside tolerance "
                f"{len(self.outside_tolerance)}; starts moved to keyframes by "
                f"{self.seconds_moved:.2f} s in all"
                + (f"; {self.reencoded} re-encoded, their keyframe lying in the previous shot"
                   if self.reencoded else ""))


PART_SUFFIX = ".mp4.partial"   # a clip being cut: .<uuid>.mp4.partial beside its final name
_PART = re.compile(r"\.[0-9a-f-]{36}" + re.escape(PART_SUFFIX))


def staged_videos(state: str) -> dict[str, dict]:
    """Every video `video scenes` read (status ok): path -> its scenes document."""
    return {d["video"]: d for d in vf.all_scenes(state) if d["status"] == "ok"}


def check_segment(seg: dict, n: int, where, staged: dict[str, dict]) -> None:
    """At use time: the segment's video is one `video scenes` staged (never a URL or another
    file), its shot one of that video's shots and every number in it finite (no NaN reaches
    the plan)."""
    f = f"segments[{n}]"
    if seg["video"] not in staged or staged[seg["video"]]["key"] != seg["key"]:
        raise vf.VideoFormatError(
            f"{where}: {f}.video {seg['video']!r:.120} is not the video `video scenes` staged "
            f"as {seg['key']!r}; re-run `video merge`")
    shot = seg.get("shot")
    if not isinstance(shot, int) or isinstance(shot, bool) \
            or not 0 <= shot < len(staged[seg["video"]]["shots"]):
        raise vf.VideoFormatError(f"{where}: {f}.shot {shot!r:.40} is not a shot of "
                                  f"{seg['key']!r}; re-run `video merge`")
    vf.check_finite(seg, f, where, "re-run `video merge`")


def remove_partial_clips(out: Path, keys) -> None:
    """Clips a killed run was cutting (.<uuid>.mp4.partial) and temp files of its plan and
    sidecars: only names this step makes."""
    remove_temp_files(out, re.compile(re.escape(vf.PLAN_FILE)))
    for key in keys:
        folder = out / key
        if not folder.is_dir() or folder.is_symlink():
            continue
        remove_temp_files(folder, re.compile(r"[0-9a-f-]{36}\.json"))
        for p in folder.iterdir():
            if _PART.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)


def _previous_plan(path: Path) -> dict[str, dict]:
    """The clips of the last plan by UUID (a plan of v1, or one that cannot be read: none,
    so every clip on disk is checked whole again)."""
    if not path.is_file():
        return {}
    try:
        plan = vf.load_plan(path)
    except (ValueError, OSError):
        return {}
    return {c["uuid"]: c for c in plan["clips"] if "size" in c}


def _still_good(dest: Path, old: dict | None, clip: dict) -> dict | None:
    """An existing clip's probe when it can be kept: as recorded by the last plan (same
    window, same size, same container duration), else decoded whole and judged again."""
    same = ("mode", "cut_start", "cut_end", "frames_max", "planned_duration",
            "duration_tolerance_s")
    if old and old.get("within_tolerance") is not None \
            and all(old.get(k) == clip[k] for k in same) \
            and old["size"] == dest.stat().st_size \
            and probe_duration(dest) == old["duration"]:
        return {"frames": old["frames"], "duration": old["duration"], "size": old["size"],
                "problem": ""}
    info = probe_clip(dest)
    return None if judge_clip(info, clip) else info


def _cut_one(source: str, window: CutWindow, reencode: bool, tmp: Path) -> str:
    """ffmpeg into ``tmp``; its error ("" when it exited 0)."""
    if reencode:   # frame-exact start; each frame keeps its source time (no frame added)
        codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-c:a", "aac",
                 "-vsync", "passthrough"]
    else:
        codec = ["-c", "copy", "-avoid_negative_ts", "make_zero"]
    proc = run_media("ffmpeg", source, ["-ss", f"{window.seek:.6f}"],
                     ["-t", f"{window.length:.6f}", "-map", "0:v:0", "-map", "0:a?", *codec,
                      "-movflags", "+faststart", "-f", "mp4"], output=tmp)
    if proc.returncode != 0:
        return f"ffmpeg exited {proc.returncode}: {proc.stderr.strip()[-200:]}"
    return ""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_clips(state: str, out: str, reencode: bool = False, write_sidecar: bool = False,
              progress: bool = True) -> CutSummary:
    """Cut every segment of STATE/tracks.json into OUT/<key>/<uuid>.mp4; OUT/plan.json.

    Under OUT's lock. Each clip is cut into a hidden .partial file, decoded whole and judged
    (``judge_clip``) before it is renamed into place; a clip already there is kept only when
    it still matches what the last plan recorded, or passes the same check again."""
    need_tool("ffmpeg")
    need_tool("ffprobe")
    doc = vf.load_tracks(state)
    tracks_path = Path(state) / vf.TRACKS_FILE
    staged = staged_videos(state)
    for n, seg in enumerate(doc["segments"]):
        check_segment(seg, n, tracks_path, staged)
    out = Path(os.path.abspath(out))
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _cut_locked(staged, out, doc["segments"], reencode, write_sidecar, progress)


def _cut_locked(staged: dict[str, dict], out: Path, segments: list[dict], reencode: bool,
                write_sidecar: bool, progress: bool) -> CutSummary:
    remove_partial_clips(out, {seg["key"] for seg in segments})
    previous = _previous_plan(out / vf.PLAN_FILE)
    summary = CutSummary(clips=len(segments))
    packets: dict[str, list[Packet]] = {}
    clips = []
    for seg in progress_bar(segments, desc="cut", unit="clip", disable=not progress):
        rel = vf.clip_file(seg["key"], clip_uuid(seg))
        try:
            clip = _cut_segment(staged[seg["video"]], out, seg, reencode, packets, previous,
                                summary)
        except OSError as exc:   # the source gone or unreadable, ffmpeg not starting
            summary.failed.append(f"{rel}: {exc}")
            continue
        if clip is None:
            continue
        summary.seconds_moved += clip["start_moved_s"]
        clips.append(clip)
        if write_sidecar:
            atomic_write_json((out / rel).with_suffix(".json"), clip)
    tolerance = max((c["duration_tolerance_s"] for c in clips), default=0.0)
    vf.write_plan(out / vf.PLAN_FILE, vf.plan_doc("reencode" if reencode else "copy", clips,
                                                  tolerance))
    return summary


def _cut_segment(scenes: dict, out: Path, seg: dict, reencode: bool,
                 packets: dict[str, list[Packet]], previous: dict[str, dict],
                 summary: CutSummary) -> dict | None:
    """One segment: its clip kept, or cut, checked and renamed into place; its plan entry
    (None when it failed: the reason is in ``summary.failed``). A copy whose keyframe lies
    before the segment's shot (it would open on the previous shot) is re-encoded instead."""
    source = seg["video"]
    cid = clip_uuid(seg)
    rel = vf.clip_file(seg["key"], cid)
    dest = out / rel
    if source not in packets:
        packets[source] = video_packets(source)
    mode = "reencode" if reencode else "copy"
    window = None if reencode else copy_window(packets[source], seg["start"], seg["end"])
    if window is None or window.cut_start < scenes["shots"][seg["shot"]]["start"] - 1e-3:
        mode, window = "reencode", reencode_window(packets[source], seg["start"], seg["end"])
        summary.reencoded += not reencode
    moved = round(seg["start"] - window.cut_start, 4)
    clip = {"uuid": cid, "file": rel, "key": seg["key"], "source": source,
            "track": seg["track"], "shot": seg["shot"], "start": seg["start"],
            "end": seg["end"], "cut_start": round(window.cut_start, 4),
            "cut_end": round(window.cut_end, 4), "start_moved_s": moved,
            "planned_duration": round(window.cut_end - window.cut_start, 4),
            "duration_tolerance_s": duration_tolerance(scenes["fps"]), "mode": mode,
            "frames_max": window.frames, "pass_ratio": seg["pass_ratio"],
            "gates": seg["gates"]}
    if dest.parent.is_symlink():
        summary.failed.append(f"{rel}: {dest.parent} is a symlink face-sets did not make; "
                              "move it away")
        return None
    if dest.is_symlink() or dest.exists() and not dest.is_file():
        summary.failed.append(f"{rel}: is not a clip this step made; move it away")
        return None
    info = _still_good(dest, previous.get(cid), clip) if dest.is_file() else None
    if info is not None:
        summary.kept += 1
    else:
        if window.frames == 0:
            summary.failed.append(f"{rel}: no frame of {source} lies in {seg['start']}.."
                                  f"{seg['end']} s")
            return None
        info, why = _cut_checked(source, window, mode == "reencode", dest, clip)
        if why:
            if dest.is_file():   # a clip of an earlier run that fails its check
                dest.unlink()
            summary.failed.append(f"{rel}: {why}")
            return None
        summary.replaced += dest.is_file()
        os.replace(dest.with_name(f".{cid}{PART_SUFFIX}"), dest)
        fsync_dir(dest.parent)
        commit_point(str(dest))
        summary.cut += 1
    clip.update(duration=info["duration"], frames=info["frames"], size=info["size"],
                within_tolerance=abs(info["duration"] - clip["planned_duration"])
                <= clip["duration_tolerance_s"])
    if not clip["within_tolerance"]:
        summary.outside_tolerance.append(
            f"{rel}: lasts {info['duration']:.3f} s, planned "
            f"{clip['planned_duration']:.3f} s +- {clip['duration_tolerance_s']} s")
    return clip


def _cut_checked(source: str, window: CutWindow, reencode: bool, dest: Path,
                 clip: dict) -> tuple[dict | None, str]:
    """Cut one clip into its .partial file and judge it: (probe, "") when it may be renamed
    into place, else (None, why) with the .partial file removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{clip['uuid']}{PART_SUFFIX}")
    try:
        why = _cut_one(source, window, reencode, tmp)
        info = None
        if not why:
            if not tmp.is_file():
                why = "ffmpeg wrote no file"
            else:
                _fsync_file(tmp)
                info = probe_clip(tmp)
                why = judge_clip(info, clip)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if why:
        tmp.unlink(missing_ok=True)
        return None, why
    return info, ""
