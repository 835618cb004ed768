"""Video targets: the files of `video scenes|stage|track|cut` (docs/video-format.md).

One source of truth for their names, bodies and checks. Every document carries
``{"format": ..., "version": N}``; a reader refuses another format, a newer version, and any
field of the wrong type or range with one line naming the file and the field
(VideoFormatError, a ValueError: the command exits 2). Layout of a state folder STATE::

    STATE/scenes/<key>.json      shots of one video (or why it was skipped)
    STATE/queue.json             the video queue (formats/queue.py, kind "video")
    STATE/faces/frames.jsonl     the worker's results: one record per shot (append-only)
    STATE/faces/model.json       the model the worker used
    STATE/tracks.json            tracks and segments
and of an output folder OUT::

    OUT/plan.json                every clip: source, times, track, gates, keyframe shift
    OUT/<key>/<uuid>.mp4         the clips (OUT/<key>/<uuid>.json with --write-sidecar)
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from ..io.fsutil import atomic_write_json, read_json

SCENES_DIR = "scenes"
QUEUE_FILE = "queue.json"
FACES_DIR = "faces"
FRAMES_LOG = "frames.jsonl"
MODEL_FILE = "model.json"
TRACKS_FILE = "tracks.json"
PLAN_FILE = "plan.json"

SCENES_FORMAT, TRACKS_FORMAT, PLAN_FORMAT = ("face-sets/video-scenes", "face-sets/video-tracks",
                                             "face-sets/video-plan")
SCENES_VERSION = TRACKS_VERSION = 1
# v2: each clip's mode, cut_end, frames_max, frames, size, duration and within_tolerance (a
# re-run keeps a clip only while it matches them); v1 plans are read, their clips checked again
PLAN_VERSION = 2
MAX_EMBEDDING_DIM = 4096
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class VideoFormatError(ValueError):
    """A video state or plan file that is malformed, of another kind or a newer version."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"...({len(text)} chars)"


class _Check:
    def __init__(self, where, fix: str = "re-run the step that writes it"):
        self.where, self.fix = str(where), fix

    def fail(self, field: str, why: str) -> VideoFormatError:
        return VideoFormatError(f"{self.where}: {field} {why}; {self.fix}")

    def number(self, value, field: str, low: float | None = None, high: float | None = None,
               optional: bool = False):
        if value is None and optional:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or (low is not None and value < low) \
                or (high is not None and value > high):
            span = f" in {low}..{high}" if high is not None else \
                (f" >= {low}" if low is not None else "")
            raise self.fail(field, f"{_show(value)} is not a finite number{span}")

    def integer(self, value, field: str, low: int = 0):
        # sizes, times in ns, frame counts: all fit 64 bits (a bigger one is no file's)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 1 << 63:
            raise self.fail(field, f"{_show(value)} is not an integer in {low}..2^63-1")

    def string(self, value, field: str, allow_empty: bool = False):
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self.fail(field, f"{_show(value)} is not a string")

    def key(self, value, field: str):
        if not (isinstance(value, str) and _KEY.fullmatch(value)):
            raise self.fail(field, f"{_show(value)} is not a plain source name")

    def listof(self, value, field: str) -> list:
        if not isinstance(value, list):
            raise self.fail(field, "is not a list")
        return value

    def header(self, data, fmt: str, version: int) -> dict:
        if not isinstance(data, dict) or data.get("format") != fmt:
            raise self.fail("format", f"is not {fmt}")
        v = data.get("version")
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise self.fail("version", f"{_show(v)} is not a valid version")
        if v > version:
            raise VideoFormatError(f"{self.where}: {fmt} v{v} is newer than this face-sets "
                                   f"(v{version}); update face-sets")
        return data

    def box(self, value, field: str):
        if not isinstance(value, list) or len(value) != 4:
            raise self.fail(field, f"{_show(value)} is not [x1, y1, x2, y2]")
        for i, v in enumerate(value):
            self.number(v, f"{field}[{i}]")


def check_finite(value, field: str, where, fix: str = "re-run the step that writes it") -> None:
    """Every number in a JSON value is finite (NaN and Infinity are refused, naming where)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise VideoFormatError(f"{where}: {field} {value!r} is not a finite number; {fix}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{field}.{k}", where, fix)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{field}[{i}]", where, fix)


def _read(path, c: _Check):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {c.fix}")
    try:
        return read_json(path)
    except UnicodeDecodeError:
        raise c.fail("file", "is not UTF-8 JSON") from None


# ---- names -------------------------------------------------------------------------------
def video_key(root: str | os.PathLike, video: str | os.PathLike) -> str:
    """A video's plain, stable name under ``root``: its relative path without the extension,
    '/' -> '__', other characters outside [A-Za-z0-9._-] -> '_' (scene file, clip folder)."""
    rel = os.path.relpath(os.path.abspath(video), os.path.abspath(root))
    stem = os.path.splitext(rel)[0].replace(os.sep, "__")
    key = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or "video"
    return key[:150]


def scenes_path(state, key: str) -> Path:
    return Path(state) / SCENES_DIR / f"{key}.json"


# ---- scenes ------------------------------------------------------------------------------
def scenes_doc(video: str, key: str, size: int, mtime_ns: int, detector: str, *,
               shots: list[dict] | None = None, fps: float = 0.0, frames: int = 0,
               duration: float = 0.0, error: str = "") -> dict:
    return {"format": SCENES_FORMAT, "version": SCENES_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "video": os.path.abspath(video),
            "key": key, "size": int(size), "mtime_ns": int(mtime_ns), "detector": detector,
            "status": "error" if error else "ok", "error": error, "fps": float(fps),
            "frames": int(frames), "duration": float(duration), "shots": shots or []}


def write_scenes(state, doc: dict) -> None:
    validate_scenes(doc, scenes_path(state, doc["key"]))
    atomic_write_json(scenes_path(state, doc["key"]), doc)


def validate_scenes(data, where) -> dict:
    c = _Check(where, "delete it and re-run `video scenes`")
    c.header(data, SCENES_FORMAT, SCENES_VERSION)
    c.string(data.get("video"), "video")
    if not os.path.isabs(data["video"]):
        raise c.fail("video", f"{_show(data['video'])} is not an absolute path")
    c.key(data.get("key"), "key")
    if Path(where).name != f"{data['key']}.json":
        raise c.fail("key", f"{_show(data['key'])} is not this file's name")
    c.integer(data.get("size"), "size")
    c.integer(data.get("mtime_ns"), "mtime_ns")
    c.string(data.get("detector"), "detector")
    if data.get("status") not in ("ok", "error"):
        raise c.fail("status", f"{_show(data.get('status'))} is not ok or error")
    c.string(data.get("error"), "error", allow_empty=True)
    c.number(data.get("fps"), "fps", 0)
    c.integer(data.get("frames"), "frames")
    c.number(data.get("duration"), "duration", 0)
    prev = 0.0
    for n, s in enumerate(c.listof(data.get("shots"), "shots")):
        f = f"shots[{n}]"
        if not isinstance(s, dict):
            raise c.fail(f, "is not an object")
        c.number(s.get("start"), f"{f}.start", prev)
        c.number(s.get("end"), f"{f}.end", s["start"])
        c.integer(s.get("start_frame"), f"{f}.start_frame")
        c.integer(s.get("end_frame"), f"{f}.end_frame", s["start_frame"])
        prev = s["end"]
    return data


def load_scenes(path) -> dict:
    c = _Check(path, "delete it and re-run `video scenes`")
    return validate_scenes(_read(path, c), path)


def all_scenes(state) -> list[dict]:
    folder = Path(state) / SCENES_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no scenes yet; run `video scenes VIDEO_DIR "
                                f"{state}` first")
    return [load_scenes(p) for p in sorted(folder.glob("*.json"))]


# ---- worker results (one record per shot) -------------------------------------------------
def frames_record(item: dict, frames: list[dict], error: str = "",
                  timing: dict | None = None) -> dict:
    rec = {"id": item["id"], "path": item["path"], "key": item["key"], "shot": item["shot"],
           "start": item["start"], "end": item["end"], "status": "error" if error else "ok",
           "error": error, "frames": frames}
    if timing:
        rec["timing"] = {k: round(float(v), 4) for k, v in timing.items()}
    return rec


def face_entry(bbox, det_score: float, face_short: float, blur: float, yaw, embedding) -> dict:
    """One detected face of a sampled frame (yaw None: the pack has no pose model)."""
    return {"bbox": [round(float(v), 2) for v in bbox], "det_score": round(float(det_score), 4),
            "face_short": round(float(face_short), 2), "blur": round(float(blur), 2),
            "yaw": None if yaw is None else round(float(yaw), 2),
            "embedding": [round(float(v), 6) for v in embedding]}


def answers(rec: dict, item: dict) -> bool:
    """Whether a worker record is the result of this queue item (same video and shot times:
    a record of a shot since re-scanned is stale and done again)."""
    return all(rec.get(k) == item[k] for k in ("id", "path", "key", "shot", "start", "end"))


def current_records(records: list[dict], queue: dict, where) -> list[dict]:
    """The latest record answering each queued item (stale ones, of items since re-staged,
    are left out), each checked: status, frame times, face boxes, scores, embeddings."""
    items = {it["id"]: it for it in queue["items"]}
    latest = {}
    for rec in records:
        it = items.get(rec.get("id"))
        if it is not None and answers(rec, it):
            latest[it["id"]] = rec
    validate_frames_records(list(latest.values()), where)
    return list(latest.values())


def validate_frames_records(records: list[dict], where) -> list[dict]:
    """Check the worker's records (numbers, boxes, one embedding width)."""
    c = _Check(where, "re-run the worker into a fresh results folder")
    dim = None
    for n, rec in enumerate(records):
        f = f"record {rec.get('id')!r}"
        if rec.get("status") not in ("ok", "error"):
            raise c.fail(f"{f} status", f"{_show(rec.get('status'))} is not ok or error")
        c.string(rec.get("error"), f"{f} error", allow_empty=True)
        for i, fr in enumerate(c.listof(rec.get("frames"), f"{f} frames")):
            ff = f"{f} frames[{i}]"
            if not isinstance(fr, dict):
                raise c.fail(ff, "is not an object")
            c.number(fr.get("t"), f"{ff}.t", 0)
            for j, face in enumerate(c.listof(fr.get("faces"), f"{ff}.faces")):
                fa = f"{ff}.faces[{j}]"
                if not isinstance(face, dict):
                    raise c.fail(fa, "is not an object")
                c.box(face.get("bbox"), f"{fa}.bbox")
                c.number(face.get("det_score"), f"{fa}.det_score", 0, 1)
                c.number(face.get("face_short"), f"{fa}.face_short", 0)
                c.number(face.get("blur"), f"{fa}.blur", 0)
                if "yaw" not in face:   # null when the pack has no pose model, never absent
                    raise c.fail(f"{fa}.yaw", "is missing (null when unknown)")
                c.number(face.get("yaw"), f"{fa}.yaw", -180, 180, optional=True)
                emb = face.get("embedding")
                if not isinstance(emb, list) or not 0 < len(emb) <= MAX_EMBEDDING_DIM \
                        or (dim is not None and len(emb) != dim):
                    raise c.fail(f"{fa}.embedding", "is not a list of numbers of the "
                                                    "model's width")
                dim = len(emb)
                for v in emb:
                    c.number(v, f"{fa}.embedding")
    return records


def load_model(path) -> dict:
    """faces/model.json: the model the worker's records came from (its ``model_id`` is
    compared with the model a resumed worker loads)."""
    c = _Check(path, "use an empty results folder")
    data = _read(path, c)
    if not isinstance(data, dict):
        raise c.fail("file", "is not a JSON object")
    c.string(data.get("model_id"), "model_id")
    return data


# ---- tracks and segments -----------------------------------------------------------------
def tracks_doc(params: dict, tracks: list[dict], segments: list[dict]) -> dict:
    return {"format": TRACKS_FORMAT, "version": TRACKS_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "params": params,
            "tracks": tracks, "segments": segments}


def validate_tracks(data, where) -> dict:
    c = _Check(where, "re-run `video merge`")
    c.header(data, TRACKS_FORMAT, TRACKS_VERSION)
    if not isinstance(data.get("params"), dict):
        raise c.fail("params", "is not an object")
    ids = set()
    for n, t in enumerate(c.listof(data.get("tracks"), "tracks")):
        f = f"tracks[{n}]"
        if not isinstance(t, dict):
            raise c.fail(f, "is not an object")
        c.string(t.get("id"), f"{f}.id")
        c.key(t.get("key"), f"{f}.key")
        c.integer(t.get("shot"), f"{f}.shot")
        for i, fr in enumerate(c.listof(t.get("frames"), f"{f}.frames")):
            if not isinstance(fr, dict):
                raise c.fail(f"{f}.frames[{i}]", "is not an object")
            c.number(fr.get("t"), f"{f}.frames[{i}].t", 0)
            c.box(fr.get("bbox"), f"{f}.frames[{i}].bbox")
        ids.add(t["id"])
    for n, s in enumerate(c.listof(data.get("segments"), "segments")):
        f = f"segments[{n}]"
        if not isinstance(s, dict):
            raise c.fail(f, "is not an object")
        if s.get("track") not in ids:
            raise c.fail(f"{f}.track", f"{_show(s.get('track'))} is not a track of this file")
        c.key(s.get("key"), f"{f}.key")
        c.integer(s.get("shot"), f"{f}.shot")
        c.string(s.get("video"), f"{f}.video")
        c.number(s.get("start"), f"{f}.start", 0)
        c.number(s.get("end"), f"{f}.end", s["start"])
        c.number(s.get("pass_ratio"), f"{f}.pass_ratio", 0, 1)
        if not isinstance(s.get("gates"), dict):
            raise c.fail(f"{f}.gates", "is not an object")
    return data


def write_tracks(state, doc: dict) -> None:
    path = Path(state) / TRACKS_FILE
    validate_tracks(doc, path)
    atomic_write_json(path, doc)


def load_tracks(state) -> dict:
    path = Path(state) / TRACKS_FILE
    c = _Check(path, "re-run `video merge`")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tracks yet; run `video merge {state}` first")
    return validate_tracks(_read(path, c), path)


# ---- the cut plan ------------------------------------------------------------------------
def plan_doc(mode: str, clips: list[dict], tolerance: float) -> dict:
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": mode,
            "duration_tolerance_s": round(float(tolerance), 4), "clips": clips}


def clip_file(key: str, uuid: str, ext: str = ".mp4") -> str:
    return f"{key}/{uuid}{ext}"


def validate_plan(data, where) -> dict:
    c = _Check(where, "delete it and re-run `video apply`")
    c.header(data, PLAN_FORMAT, PLAN_VERSION)
    if data.get("mode") not in ("copy", "reencode"):
        raise c.fail("mode", f"{_show(data.get('mode'))} is not copy or reencode")
    c.number(data.get("duration_tolerance_s"), "duration_tolerance_s", 0)
    for n, clip in enumerate(c.listof(data.get("clips"), "clips")):
        f = f"clips[{n}]"
        if not isinstance(clip, dict):
            raise c.fail(f, "is not an object")
        if not (isinstance(clip.get("uuid"), str) and _UUID.fullmatch(clip["uuid"])):
            raise c.fail(f"{f}.uuid", f"{_show(clip.get('uuid'))} is not a UUID")
        c.key(clip.get("key"), f"{f}.key")
        ext = os.path.splitext(str(clip.get("file")))[1]
        if clip.get("file") != clip_file(clip["key"], clip["uuid"], ext) or ext != ".mp4":
            raise c.fail(f"{f}.file", f"{_show(clip.get('file'))} is not <key>/<uuid>.mp4")
        c.string(clip.get("source"), f"{f}.source")
        for k in ("start", "end", "cut_start", "start_moved_s"):
            c.number(clip.get(k), f"{f}.{k}", 0)
        c.number(clip.get("duration"), f"{f}.duration", 0, optional=data["version"] < 2)
        if data["version"] >= 2:
            c.number(clip.get("cut_end"), f"{f}.cut_end", clip["cut_start"])
            c.integer(clip.get("frames_max"), f"{f}.frames_max")
            c.integer(clip.get("frames"), f"{f}.frames")
            c.integer(clip.get("size"), f"{f}.size")
            if clip.get("mode") not in ("copy", "reencode"):
                raise c.fail(f"{f}.mode", f"{_show(clip.get('mode'))} is not copy or reencode")
            if not isinstance(clip.get("within_tolerance"), bool):
                raise c.fail(f"{f}.within_tolerance", "is not true or false")
    check_finite(data, "plan", where, c.fix)
    return data


def load_plan(path) -> dict:
    c = _Check(path, "delete it and re-run `video apply`")
    return validate_plan(_read(path, c), path)


def write_plan(path, doc: dict) -> None:
    validate_plan(doc, path)
    atomic_write_json(path, doc)
