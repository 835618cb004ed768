"""The occlusion filter's rules, shared by ``occlusion apply`` / ``report`` (steps/occlusion)
and export-swap's ``--max-occlusion`` (steps/export): the defaults live here, once.

A face is flagged when its probability for any attribute (mask, sunglasses, occluded...)
reaches ``IMAGE_THRESHOLD``; a faceset with ``FACESET_SHARE`` of its faces flagged is
quarantined whole (``masked``); otherwise its flagged faces are pruned, and a faceset left
with fewer than ``MIN_SURVIVORS`` after something was pruned is quarantined as ``thin``.
"""
from __future__ import annotations

IMAGE_THRESHOLD = 0.7      # a face is flagged at this probability for any attribute
FACESET_SHARE = 0.4        # a faceset with this share of its faces flagged goes to _masked/
MIN_SURVIVORS = 5          # fewer faces left after pruning: the faceset goes to _thin/


def verdict_of(faces: int, flagged: int, faceset_share: float = FACESET_SHARE,
               min_survivors: int = MIN_SURVIVORS) -> str:
    """keep | prune | masked | thin for a faceset of ``faces`` with ``flagged`` flagged."""
    if faces and flagged / faces >= faceset_share:
        return "masked"
    if flagged == 0:
        return "keep"
    return "thin" if faces - flagged < min_survivors else "prune"


def occlusion_by_key(scores_doc: dict) -> dict[str, float]:
    """Cache face key -> its highest attribute probability, from a (checked) scores file:
    what export-swap's ``--max-occlusion`` gate reads."""
    out: dict[str, float] = {}
    for faces in scores_doc["facesets"].values():
        for f in faces:
            if f.get("key"):
                out[f["key"]] = max(max(f["scores"].values()), out.get(f["key"], 0.0))
    return out


def scores_for_export(out, explicit: str | None) -> tuple[str | None, dict[str, float]]:
    """The scores export-swap gates OUT's faces with: ``explicit`` (--occlusion-scores), else
    the scores file the last ``occlusion apply`` on OUT used (its ``occlusion_filter_run``),
    when it still exists. (path or None, key -> probability)."""
    import os
    from pathlib import Path

    from ..formats.manifest import SWAP_MANIFEST, ManifestError, load_manifest
    from ..formats.occlusion import LIBRARY_MANIFEST, RUN_SECTION, load_scores

    path = explicit
    top_path = Path(out) / LIBRARY_MANIFEST
    if path is None and top_path.is_file():
        try:
            run = load_manifest(top_path, SWAP_MANIFEST).get(RUN_SECTION) or {}
        except (ManifestError, ValueError):
            run = {}
        cand = run.get("scores") if isinstance(run, dict) else None
        if isinstance(cand, str) and os.path.isfile(cand):
            path = cand
    if path is None:
        return None, {}
    return path, occlusion_by_key(load_scores(path))
