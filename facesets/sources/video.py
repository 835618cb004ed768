"""Video frames as a photo source: the frames sampled at ``fps`` within each shot.

Ids are ``<video path>#t=<seconds>`` (3 decimals), the time of the sampled frame. Frames are
decoded with OpenCV's FFmpeg backend, which reports each frame's own timestamp, so a
variable-frame-rate video is sampled by time, not by frame number: the frame shown at time t
is the last one whose timestamp is <= t. ``iter_frames`` decodes a shot's samples in one
forward pass (the worker's path); ``read_bytes`` decodes one frame and encodes it as PNG
(the PhotoSource contract, for anything that reads photos by id).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .base import PhotoSource, SourceItem

VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"}
SEEK_BACK_S = 1.0   # seek this far before a shot, then decode forward to it


def list_videos(root: str | os.PathLike) -> list[str]:
    """Video files under ``root`` (recursive, hidden folders skipped), sorted; a file root is
    itself."""
    root = Path(root)
    if root.is_file():
        return [str(root.resolve())]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such video folder")
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in files
                if os.path.splitext(f)[1].lower() in VIDEO_EXTS and not f.startswith(".")]
    return sorted(os.path.abspath(p) for p in out)


def sample_times(start: float, end: float, fps: float) -> list[float]:
    """Times sampled in [start, end) at ``fps``: the middle of each 1/fps slot (a shot shorter
    than one slot still gets its middle frame)."""
    step = 1.0 / fps
    n = max(1, int((end - start) * fps + 1e-9))
    return [round(start + (k + 0.5) * step, 4) for k in range(n) if start + k * step < end]


def open_capture(path: str):
    import cv2  # here, not at module import: `--help` loads no OpenCV
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise OSError(f"{path}: not a readable video")
    return cap


def iter_frames(path: str, times: list[float]) -> Iterator[tuple[float, float, np.ndarray]]:
    """``(t wanted, t of the frame, BGR frame)`` for each of the sorted ``times``: one forward
    decode from just before the first (only frames at or before a wanted time are decoded
    to pixels). Raises OSError when the video cannot be opened."""
    import cv2
    if not times:
        return
    cap = open_capture(path)
    try:
        start = max(0.0, times[0] - SEEK_BACK_S)
        if start > 0:
            cap.set(cv2.CAP_PROP_POS_MSEC, start * 1000.0)
        want = list(times)
        held: tuple[float, np.ndarray] | None = None   # the last frame at or before want[0]
        while want:
            if not cap.grab():
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if want and t > want[0] + 1e-6 and held is None:   # wanted before the first frame
                ok, frame = cap.retrieve()
                if ok:
                    held = (t, frame)
            while want and t > want[0] + 1e-6:
                if held is not None:
                    yield want[0], held[0], held[1]
                want.pop(0)
            if want:
                ok, frame = cap.retrieve()
                if ok:
                    held = (t, frame)
        for w in want:   # past the last frame: the last one shown
            if held is not None:
                yield w, held[0], held[1]
    finally:
        cap.release()


def frame_id(video: str, t: float) -> str:
    return f"{video}#t={t:.3f}"


def parse_frame_id(item_id: str) -> tuple[str, float]:
    video, sep, t = item_id.rpartition("#t=")
    if not sep:
        raise ValueError(f"{item_id!r} is not <video>#t=<seconds>")
    return video, float(t)


class VideoSource(PhotoSource):
    """The sampled frames of one video: ``shots`` [(start, end) seconds] (default: the
    whole video as one shot) at ``fps`` frames per second."""

    kind = "video"

    def __init__(self, location: str, shots: list[tuple[float, float]] | None = None,
                 fps: float = 2.0):
        import cv2
        self.video = os.path.abspath(location)
        self.fps = float(fps)
        if shots is None:
            cap = open_capture(self.video)
            try:
                n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
                rate = cap.get(cv2.CAP_PROP_FPS) or 25.0
            finally:
                cap.release()
            shots = [(0.0, n / rate)]
        self.shots = list(shots)

    def list_ids(self) -> list[str]:
        return [frame_id(self.video, t) for start, end in self.shots
                for t in sample_times(start, end, self.fps)]

    def item(self, item_id: str) -> SourceItem:
        video, t = parse_frame_id(item_id)
        st = os.stat(video)
        return SourceItem(id=item_id, size=st.st_size, mtime_ns=st.st_mtime_ns,
                          provenance={"video": video, "t": t})

    def read_bytes(self, item_id: str) -> bytes:
        import cv2
        video, t = parse_frame_id(item_id)
        if not os.path.exists(video):
            raise FileNotFoundError(video)
        for _, _, frame in iter_frames(video, [t]):
            ok, buf = cv2.imencode(".png", frame)
            if ok:
                return buf.tobytes()
        raise OSError(f"{item_id}: no frame at that time")

    def describe(self) -> dict:
        return {"kind": self.kind, "video": self.video, "fps": self.fps,
                "shots": len(self.shots)}
