"""The occlusion filter's files (docs/occlusion-format.md): one source of truth for their
names, versions, bodies and checks.

  RESULTS.queue.json    the queue an occlusion worker's JSON Lines RESULTS answer (written by
                        the worker when it starts; ``occlusion merge`` reads both)
  SCORES                ``face-sets/occlusion-scores``: per faceset of one export, every face
                        PNG scored, with its sha256 and its probability per attribute
  SCORES.plan.json      ``face-sets/occlusion-plan``: what ``occlusion apply`` does (or, with
                        --dry-run, would do) to the export, per faceset
Every file is validated on read: one error naming the file and the field.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from ..io.fsutil import atomic_write_json, read_json
from .eras import THIN_DIR, THIN_SECTION  # noqa: F401  (one _thin/ and thin_eras[] for both
#   steps that fill them: the eras step, and apply here for facesets left too thin)
from .manifest import FACE_PNG, FACESET_NAME, MANIFEST_FILE

SCORES_FORMAT = "face-sets/occlusion-scores"
SCORES_VERSION = 1
PLAN_FORMAT = "face-sets/occlusion-plan"
PLAN_VERSION = 1
RESULTS_QUEUE_SUFFIX = ".queue.json"      # RESULTS.queue.json beside a worker's results
PLAN_SUFFIX = ".plan.json"                # SCORES.plan.json
MASKED_DIR = "_masked"                    # SWAP_READY/_masked/faceset_NNN: mostly occluded
MASKED_SECTION = "masked"                 # top-level manifest sections apply fills
RUN_SECTION = "occlusion_filter_run"      # the last apply's record (thresholds, counts)
LIBRARY_MANIFEST = MANIFEST_FILE          # SWAP_READY/manifest.json: holds RUN_SECTION
DROP_REASON = "occlusion"                 # dropped[] reason of a pruned face
VERDICTS = ("keep", "prune", "masked", "thin")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ScoresError(ValueError):
    """A scores or plan file that is missing, malformed or of a newer version."""


def results_queue_path(results: str | os.PathLike) -> Path:
    return Path(os.fspath(results) + RESULTS_QUEUE_SUFFIX)


def plan_path(scores: str | os.PathLike) -> Path:
    return Path(os.fspath(scores) + PLAN_SUFFIX)


def new_scores(export: str, export_run: str | None, queue: str, results: list[str],
               scorers: list[str], facesets: dict[str, list[dict]], unscored: list[str],
               errors: list[dict]) -> dict:
    """A scores document; ``facesets``: name -> [{file, key, sha256, scores}] by file."""
    attrs = sorted({a for faces in facesets.values() for f in faces for a in f["scores"]})
    return {"format": SCORES_FORMAT, "version": SCORES_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "export": export,
            "export_run": export_run, "queue": queue, "results": list(results),
            "scorers": sorted(set(scorers)), "attributes": attrs,
            "facesets": {k: sorted(v, key=lambda f: f["file"]) for k, v in
                         sorted(facesets.items())},
            "unscored": sorted(unscored), "errors": errors}


def write_scores(path: str | os.PathLike, doc: dict) -> None:
    check_scores(doc, str(path))
    atomic_write_json(path, doc)


def _probability(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and 0 <= v <= 1


def check_scores(doc, where: str) -> dict:
    def bad(field: str, why: str) -> ScoresError:
        return ScoresError(f"{where}: {field} {why}; run occlusion merge again")

    if not isinstance(doc, dict) or doc.get("format") != SCORES_FORMAT:
        raise bad("format", f"is not {SCORES_FORMAT}")
    v = doc.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise bad("version", f"{v!r} is not a version")
    if v > SCORES_VERSION:
        raise ScoresError(f"{where}: scores v{v} are newer than this face-sets "
                          f"(v{SCORES_VERSION}); update face-sets")
    export = doc.get("export")
    if not isinstance(export, str) or not os.path.isabs(export) or "\x00" in export:
        raise bad("export", f"{export!r} is not an absolute folder path")
    for key in ("scorers", "attributes", "unscored", "results"):
        if not isinstance(doc.get(key), list) or not all(isinstance(x, str)
                                                         for x in doc[key]):
            raise bad(key, "is not a list of strings")
    attrs = set(doc["attributes"])
    facesets = doc.get("facesets")
    if not isinstance(facesets, dict):
        raise bad("facesets", "is not an object")
    for name, faces in facesets.items():
        if not FACESET_NAME.fullmatch(name):
            raise bad("facesets", f"key {name!r} is not a faceset name (faceset_NNN)")
        if not isinstance(faces, list):
            raise bad(f"facesets.{name}", "is not a list")
        seen = set()
        for i, f in enumerate(faces):
            field = f"facesets.{name}[{i}]"
            if not isinstance(f, dict):
                raise bad(field, "is not an object")
            if not isinstance(f.get("file"), str) or not FACE_PNG.fullmatch(f["file"]):
                raise bad(f"{field}.file", f"{f.get('file')!r} is not faces/NNN.png")
            if f["file"] in seen:
                raise bad(f"{field}.file", f"{f['file']!r} appears twice")
            seen.add(f["file"])
            if not isinstance(f.get("sha256"), str) or not _SHA256.fullmatch(f["sha256"]):
                raise bad(f"{field}.sha256", "is not a sha256")
            if not isinstance(f.get("key", ""), str):
                raise bad(f"{field}.key", "is not a string")
            scores = f.get("scores")
            if not isinstance(scores, dict) or not scores:
                raise bad(f"{field}.scores", "is not an object of probabilities")
            for k, p in scores.items():
                if k not in attrs:
                    raise bad(f"{field}.scores", f"attribute {k!r} is not in attributes")
                if not _probability(p):
                    raise bad(f"{field}.scores.{k}", f"{p!r} is not a probability in 0..1")
    if not isinstance(doc.get("errors"), list):
        raise bad("errors", "is not a list")
    return doc


def load_scores(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scores file; run occlusion merge first")
    try:
        doc = read_json(path)
    except UnicodeDecodeError:
        raise ScoresError(f"{path}: not UTF-8 JSON; run occlusion merge again") from None
    return check_scores(doc, str(path))


def plan_body(scores: str, export: str, thresholds: dict, facesets: list[dict],
              dry_run: bool) -> dict:
    """The plan apply writes: per faceset its verdict, flagged faces, counts."""
    counts = {v: sum(1 for f in facesets if f["verdict"] == v) for v in VERDICTS}
    counts["pruned_faces"] = sum(len(f["prune"]) for f in facesets
                                 if f["verdict"] in ("prune", "thin"))
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scores": scores,
            "export": export, "dry_run": dry_run, "thresholds": thresholds,
            "counts": counts, "facesets": facesets}


def filter_run_record(run: str, scores: str, thresholds: dict, counts: dict,
                      scorers: list[str]) -> dict:
    """The top-level manifest's ``occlusion_filter_run``: the last apply."""
    return {"run": run, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": "occlusion",
            "scores": scores, "scorers": scorers, "thresholds": thresholds, "counts": counts}
