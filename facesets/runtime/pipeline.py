"""``run``: the whole pipeline, embed -> cluster -> refine -> dedup -> enrich -> export-swap.

Resumable across crashes: OUT/run_state.json (written atomically after every step) records
each finished step with a digest of the inputs it saw: the SRC listing, the cache content it
read (keys, embeddings, boxes, locations; pose and landmarks too for export-swap), the
manifests it read and its parameters. A re-run skips a step whose recorded digest equals
the current one and whose output is still there, and redoes it otherwise (then the steps
after it see changed inputs and are redone too). Each step itself is crash-safe (segments,
staging folders), so a step killed half-way is simply run again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..formats.cache import FaceCache, cache_exists, load_cache
from ..formats.manifest import CLUSTER_MANIFEST_FILE, MANIFEST_FILE, REFINE_MANIFEST_FILE
from ..formats.runstate import STATE_FILE, RunState
from ..io.fsutil import sha256_file

# the steps in the order `run` runs them; each is a command module's pipeline_step()
STEPS = ("embed", "cluster", "refine", "dedup", "enrich", "export-swap")
# ... and on an OUT that holds a library already: raw/ and facesets/ extended, the library
# grown (commands/run.py defines extend's and grow's steps)
GROW_STEPS = ("embed", "extend", "dedup", "enrich", "grow")
# the options naming the model pack (part of the inputs of the steps that run the model)
MODEL_OPTIONS = ("model", "model_root", "det_size")
# columns enrich adds: only export-swap (quality) reads them
ENRICHED = ("pose", "pose_method", "landmark_2d_106", "landmark_3d_68")


@dataclass
class RunLayout:
    src: Path
    out: Path
    cache: Path

    @property
    def raw(self) -> Path:
        return self.out / "raw"

    @property
    def facesets(self) -> Path:
        return self.out / "facesets"

    @property
    def swap_ready(self) -> Path:
        return self.out / "swap_ready"

    @property
    def state(self) -> Path:
        return self.out / STATE_FILE

    @property
    def raw_manifest(self) -> Path:
        return self.raw / CLUSTER_MANIFEST_FILE

    @property
    def refine_manifest(self) -> Path:
        return self.facesets / REFINE_MANIFEST_FILE

    @property
    def swap_manifest(self) -> Path:
        return self.swap_ready / MANIFEST_FILE


# default home of caches, logs and outputs: the project's work/ folder (kept out of git) in a
# checkout; an installed face-sets (`pip install .`: the package in site-packages, no
# sort_faces.py beside it) uses ~/.face-sets/work
_CHECKOUT = Path(__file__).resolve().parent.parent.parent
WORK_DIR = (_CHECKOUT / "work" if (_CHECKOUT / "sort_faces.py").is_file()
            else Path.home() / ".face-sets" / "work")


def work_dir() -> Path:
    """The project's work/ folder (~/.face-sets/work when installed), or $FACESETS_WORK_DIR
    when set."""
    return Path(os.environ.get("FACESETS_WORK_DIR") or WORK_DIR)


def default_cache(src: str | os.PathLike) -> Path:
    """work/cache/<SRC folder name>.npz in the project's work folder, wherever the command
    is run from."""
    name = Path(os.path.abspath(src)).name or "photos"
    return work_dir() / "cache" / f"{name}.npz"


def digest(*parts) -> str:
    """sha256 over ``parts``: arrays by dtype, shape and bytes, the rest as sorted JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode() + str(part.shape).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


def cache_digest(cache: FaceCache, enriched: bool) -> str:
    """Digest of what the grouping steps read from a cache (``enriched``: and the pose and
    landmark columns enrich adds)."""
    f = cache.faces
    cols = ["sha256", "index", "embedding", "bbox", "det_score", "face_short", "blur"]
    if enriched:
        cols += [c for c in ENRICHED if c in f]
    estimated = (cache.meta.get("estimate") or {}).get("thresholds")
    return digest(*(f[c] for c in cols), cache.paths["path"], cache.paths["sha256"],
                   cache.files["status"], cache.meta.get("model_id"),
                   cache.meta.get("thresholds"), *([estimated] if estimated else []))


def listing_digest(paths: list[str]) -> str:
    """Digest of a photo listing: path, size and mtime of each file."""
    rows = []
    for p in paths:
        try:
            st = os.stat(p)
            rows.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((p, -1, -1))
    return digest(rows)


def file_digest(path: Path) -> str:
    return sha256_file(path) if path.is_file() else "missing"


@dataclass
class Step:
    name: str
    inputs: Callable[[], str]          # digest of what it reads, computed just before
    output: Path                       # a file that exists once the step has run
    action: Callable[[], dict]         # runs it; returns a small summary


def option_values(args, *names: str) -> dict:
    """The values of the command-line options ``names`` (part of a step's inputs)."""
    return {n: getattr(args, n) for n in names}


def run_steps(steps: list[Step], state: RunState, log: Callable[[str], None]) -> dict:
    """Run each step unless it finished with the same inputs and its output is there."""
    ran, skipped = [], []
    for step in steps:
        inputs = step.inputs()
        if state.done(step.name, inputs) and step.output.exists():
            skipped.append(step.name)
            log(f"run: {step.name}: done already with these inputs, skipped")
            continue
        t = time.monotonic()
        summary = step.action()
        if summary.get("interrupted"):
            return {"ran": ran, "skipped": skipped, "interrupted": step.name}
        state.finish(step.name, inputs, summary)
        ran.append(step.name)
        log(f"run: {step.name}: finished in {time.monotonic() - t:.1f} s")
    return {"ran": ran, "skipped": skipped, "interrupted": ""}


def cache_inputs(layout: RunLayout, enriched: bool, *extra) -> Callable[[], str]:
    """A step's inputs: what it reads of the cache, and ``extra`` (its options)."""
    def inputs() -> str:
        if not cache_exists(layout.cache):
            return "no cache"
        return digest(cache_digest(load_cache(layout.cache), enriched), *extra)
    return inputs
