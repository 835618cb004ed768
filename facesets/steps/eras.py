"""``eras``: split one long-lived identity of a swap-ready folder into facesets by era.

One faceset of SWAP_READY (any ``faceset_NNN``) and the cache it came from:
  1. probe (printed, and kept in the run's record): the histogram of the faceset's pairwise
     distances, its sub-cluster sizes at the probe distances (buffalo_l 0.30-0.50), and the
     EXIF years of each sub-cluster at the split distance;
  2. wide recovery: every face of the cache within ``recover`` of the faceset's centroid,
     except faces another faceset of SWAP_READY holds (they are someone else's);
  3. refine's quality gates (face size, blur, detector score);
  4. re-centroid (the mean of what is left) and tighten: faces farther than ``tighten``
     from it go;
  5. sub-cluster at ``split`` (average linkage through facesets/engine; two faces of one
     photo never share a sub-cluster);
  6. anchors: sub-clusters of at least ``min_anchor`` faces. Every other sub-cluster is a
     fragment; a fragment joins the single anchor whose centroid is nearest to its own,
     only if that distance is within ``attach`` AND its dominant year is within
     ``year_window`` years of the anchor's (both need dated faces). Fragments join the
     anchors as they were (never a grown anchor, never another fragment): not transitive;
  7. eras: each anchor with the fragments that joined it, and each fragment that joined
     none on its own; named ``faceset_NNN_YYYY-YYYY`` after the 5th to 95th percentile of
     their dated faces' years (``faceset_NNN_undated`` without one; ``_2``... on a clash);
  8. export each era as a new faceset (export-swap's gates and crops); an era left with
     fewer than ``min_era_faces`` faces goes to ``_thin/`` (``thin_eras[]`` of the
     top-level manifest). The source faceset stays as it was. All of it is one recorded run
     (core/runs.py): ``undo`` reverses it.

Photos without a capture date (no EXIF DateTimeOriginal/DateTimeDigitized, or an
implausible one) take part in every distance step, but never vote for a year: an era's years
and dominant year come from its dated faces only, and a fragment with no dated face (or an
anchor with none) cannot pass the year test, so it is never attached by distance alone.

``eras extend`` slots faces added to the cache later into the eras of the last ``eras`` run
by the same rule: the new faces (recovered from that run's centroid, gated, tightened,
named by no era yet) are sub-clustered at ``split`` and each fragment joins the nearest era
of SWAP_READY (not ``_thin/``) within ``attach`` and ``year_window``; the era's faces are
re-ranked and its bundles rebuilt. Fragments that join none are reported and left out.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.dates import Dates, capture_dates
from ..core.joining import Joining, build_joined, joined_changes
from ..core.library import curated_out_keys, display_name
from ..core.newsets import NewFaceset, add_facesets
from ..core.refinement import RefineParams, quality_mask
from ..core.selection import FaceSelection, groups_by_label, select_faces, subset
from ..core.quality import cache_row, face_quality
from ..core.swapexport import ExportParams, Planned, plan_entry, select_for_swap
from ..core.thresholds import probe_levels
from ..engine import cluster_faces, cluster_sweep, normalize_rows
from ..formats.cache import FaceCache, load_cache
from ..formats.eras import (ERAS_SECTION, THIN_DIR, THIN_SECTION, check_eras_sections,
                            era_entry, era_name, eras_record, thin_record)
from ..formats.manifest import (FACESET_BASE, SWAP_FACESET_MANIFEST, ManifestError,
                                centroid_of, load_manifest)
from ..formats.swapset import MANIFEST_NAME, read_label

STEP = "eras"
STEP_EXTEND = "eras-extend"
HIST_STEP = 0.05          # probe histogram bin width (cosine distance)
PROBE_MAX_FACES = 3000    # the probe's pairwise histogram samples this many faces at most
TOP_SUBCLUSTERS = 12      # sub-clusters the probe lists with their years
PROBE_SIZES = 50          # sizes of the largest sub-clusters the probe keeps per distance



def era_export_lines(plan) -> list[str]:
    """Why each era that is not exported as a faceset went to _thin/ or nowhere (eras and
    eras extend): the faces the export's gates kept of those planned, and the gates' reasons."""
    planned = {e.name: e.faces for e in plan.eras}
    out = []
    for e in plan.result:
        if not e["thin"]:
            continue
        dropped = plan.export_dropped.get(e["name"], {})
        why = ", ".join(f"{r} {n}" for r, n in sorted(dropped.items()))
        out.append(f"  era {e['name']}: {e['faces']} of its {planned.get(e['name'], '?')} "
                   "faces passed the export's gates" + (f" (dropped: {why})" if why else "")
                   + f", under --min-era-faces {plan.params.min_era_faces} -> "
                   f"{THIN_DIR}/")
    out += [f"  era {name}: none of its {planned.get(name, '?')} faces passed the export's "
            "gates (export-swap's --min-face-short, --swap-outlier-threshold of the "
            "source faceset)" for name in plan.skipped]
    return out


@dataclass
class ErasParams:
    recover: float            # cosine distances: the model's (core/thresholds.py)
    tighten: float
    split: float
    attach: float
    min_anchor: int = 20      # faces a sub-cluster needs to be an anchor
    min_era_faces: int = 20   # an era exported with fewer faces goes to _thin/
    year_window: int = 5      # a fragment's dominant year vs its anchor's, +- years
    min_short: float = RefineParams.min_short     # refine's quality gates
    min_blur: float = RefineParams.min_blur
    min_det_score: float = RefineParams.min_det_score
    engine: str = "auto"

    def gates(self) -> RefineParams:
        return RefineParams(0.0, 0.0, 0.0, min_short=self.min_short, min_blur=self.min_blur,
                            min_det_score=self.min_det_score, engine=self.engine)


# ---- the rule: years, fragments, anchors (pure; unit-tested) ------------------------------
def dominant_year(years) -> int | None:
    """The most frequent year (the earliest on a tie); None without a dated face."""
    ys = [y for y in years if y is not None]
    if not ys:
        return None
    counts = Counter(ys)
    best = max(counts.values())
    return min(y for y, n in counts.items() if n == best)


def year_span(years) -> tuple[int, int] | None:
    """The 5th to 95th percentile (nearest rank) of the dated years: an era's name, robust
    to a stray misdated photo in a large era; None without a dated face."""
    ys = sorted(y for y in years if y is not None)
    if not ys:
        return None
    lo, hi = np.percentile(ys, [5, 95], method="nearest")
    return int(lo), int(hi)


@dataclass
class Attach:
    """Where one fragment goes: the nearest anchor (index), its centroid distance, whether
    it joins, and why not."""
    nearest: int
    distance: float
    joined: bool
    why: str


def attach_fragments(anchor_centroids: np.ndarray, anchor_years: list[int | None],
                     fragment_centroids: np.ndarray, fragment_years: list[int | None],
                     attach: float, window: int) -> list[Attach]:
    """The anchor rule: each fragment looks at the single anchor whose centroid is nearest
    its own and joins it only if within ``attach`` AND its dominant year is within
    ``window`` years of the anchor's. Anchors are taken as given (a fragment that joins does
    not move them), so joining is never transitive."""
    out = []
    if len(anchor_centroids) == 0:
        return [Attach(-1, float("nan"), False, "no anchor") for _ in fragment_years]
    a = normalize_rows(anchor_centroids)
    f = normalize_rows(fragment_centroids) if len(fragment_centroids) else \
        np.zeros((0, a.shape[1]), np.float32)
    dist = 1.0 - f @ a.T
    for i, fy in enumerate(fragment_years):
        k = int(np.argmin(dist[i]))
        d = float(dist[i, k])
        ay = anchor_years[k]
        if d > attach:
            why = f"nearest anchor at {d:.3f} > {attach}"
        elif fy is None:
            why = "no dated photo"
        elif ay is None:
            why = "its anchor has no dated photo"
        elif abs(fy - ay) > window:
            why = f"year {fy} vs anchor's {ay}: more than {window} years apart"
        else:
            why = ""
        out.append(Attach(k, d, why == "", why))
    return out


# ---- the plan ------------------------------------------------------------------------------
@dataclass
class Era:
    members: np.ndarray          # positions in the selection
    anchor: bool
    fragments: int               # fragments that joined
    years: tuple[int, int] | None
    dominant: int | None
    undated: int
    centroid: np.ndarray
    name: str = ""

    @property
    def faces(self) -> int:
        return len(self.members)


@dataclass
class Fragment:
    """A sub-cluster under ``min_anchor`` faces and what the anchor rule made of it."""
    faces: int
    year: int | None
    distance: float              # to the nearest anchor's centroid
    joined: bool
    why: str                     # why it did not join
    nearest: str                 # the era of the nearest anchor ("" without anchors)

    def line(self, otherwise: str) -> str:
        """The plan's line for it; ``otherwise``: what became of it when it did not join."""
        return (f"  fragment of {self.faces} faces (dominant year {self.year or 'undated'}): "
                + (f"joins {self.nearest} ({self.distance:.3f})" if self.joined
                   else f"{otherwise} ({self.why})"))


@dataclass
class ErasPlan:
    root: Path
    cache_path: str
    source: str
    params: ErasParams
    centroid: np.ndarray = None          # re-computed (step 4): what extend recovers from
    counts: dict = field(default_factory=dict)
    eras: list[Era] = field(default_factory=list)
    fragments: list[Fragment] = field(default_factory=list)
    probe: dict = field(default_factory=dict)
    dates: Dates | None = None
    cache: FaceCache | None = None
    sel: FaceSelection | None = None
    result: list[dict] = field(default_factory=list)   # the eras[] entries, once exported
    skipped: list[str] = field(default_factory=list)  # eras the export's gates emptied
    # era -> {reason: faces} the export's gates dropped (said when an era ends thin)
    export_dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    shown: str = ""      # "faceset_017 (Anna)": the source by its label, read when planned

    def done_line(self) -> str:
        thin = [e["name"] for e in self.result if e["thin"]]
        made = [f"{e['name']} ({e['faces']} faces)" for e in self.result if not e["thin"]]
        return (f"{len(made)} eras exported: {', '.join(made) or 'none'}; {len(thin)} to "
                f"{THIN_DIR}/" + (f" ({', '.join(thin)})" if thin else "")
                + (f"; {len(self.skipped)} left without a face by the export's gates"
                   if self.skipped else ""))

    def export_lines(self) -> list[str]:
        return era_export_lines(self)

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"recovered {c['recovered']} faces within {self.params.recover} of "
               f"{self.shown}'s centroid ({c['source_in_cache']} of its {c['source_faces']} "
               f"faces among them; {c['held_elsewhere']} held by other facesets left out); "
               f"quality gates dropped {c['gated']}, tightening to {self.params.tighten} "
               f"dropped {c['tightened']}; {c['kept']} faces, {c['subclusters']} "
               f"sub-clusters at {self.params.split}, {c['anchors']} anchors "
               f"(>= {self.params.min_anchor} faces)"]
        out += [f.line("an era of its own") for f in self.fragments]
        for e in self.eras:
            thin = " -> _thin/" if e.faces < self.params.min_era_faces else ""
            out.append(f"  era {e.name}: {e.faces} faces ({'anchor' if e.anchor else 'fragment'}"
                       f"{f' + {e.fragments} fragments' if e.fragments else ''}), dominant year "
                       f"{e.dominant or '-'}, {e.undated} undated{thin}")
        return out

    def line(self) -> str:
        thin = sum(1 for e in self.eras if e.faces < self.params.min_era_faces)
        return (f"{len(self.eras)} eras of {self.shown} ({len(self.eras) - thin} to export, "
                f"{thin} to {THIN_DIR}/ under {self.params.min_era_faces} faces) from "
                f"{self.counts.get('kept', 0)} faces")


def library_faces(root: Path, skip: set[str]) -> dict[str, str]:
    """Face key -> faceset of every face the facesets of SWAP_READY hold (in ``faces[]``),
    except those of ``skip``."""
    held = {}
    for entry in runs.load_top(root).get("facesets", []):
        if entry["name"] in skip:
            continue
        m = load_manifest(root / entry["name"] / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        for face in m["faces"]:
            held[face["key"]] = entry["name"]
    return held


def live_eras(root: Path, source: str) -> dict | None:
    """The record of the last ``eras`` run on ``source`` still in effect (not undone)."""
    top = runs.load_top(root)
    check_eras_sections(top, root / MANIFEST_NAME)
    undone = {e["id"] for e in top.get("runs", []) if e.get("undone_by")}
    recs = [r for r in top.get(ERAS_SECTION, [])
            if r["source"] == source and r["run"] not in undone]
    return recs[-1] if recs else None


def _era(sel: FaceSelection, members: np.ndarray, dates: Dates, anchor: bool,
         fragments: int) -> Era:
    years = [dates.year(str(sel.sha256[i])) for i in members]
    cen = normalize_rows(sel.embeddings[members].mean(axis=0, keepdims=True))[0]
    return Era(members, anchor, fragments, year_span(years), dominant_year(years),
               sum(1 for y in years if y is None), cen)


def probe(sel: FaceSelection, members: np.ndarray, dates: Dates, split: float,
          engine: str = "auto") -> dict:
    """Step 1 on the faceset's own faces: the pairwise distance histogram, sub-cluster
    sizes at the probe distances, the years of each sub-cluster at ``split``."""
    out: dict = {"faces": int(len(members))}
    if len(members) < 2:
        return out
    pick = members
    if len(pick) > PROBE_MAX_FACES:
        pick = np.sort(np.random.default_rng(0).choice(members, PROBE_MAX_FACES,
                                                       replace=False))
        out["sampled"] = PROBE_MAX_FACES
    e = sel.embeddings[pick]
    d = (1.0 - e @ e.T)[np.triu_indices(len(pick), 1)]
    edges = np.arange(0.0, 1.0 + HIST_STEP / 2, HIST_STEP)
    counts, _ = np.histogram(np.clip(d, 0.0, 1.0), bins=edges)
    out["histogram"] = {"bin": HIST_STEP, "counts": [int(c) for c in counts],
                        "median": round(float(np.median(d)), 4)}
    levels = probe_levels(split)
    if split not in levels:
        levels = sorted(levels + [split])
    cl = sel.cannot_link(members)
    sweep = cluster_sweep(sel.embeddings[members], levels, cl, engine)
    out["subclusters"] = {}
    for t, lab in zip(levels, sweep):
        sizes = sorted((int(n) for n in np.bincount(lab)), reverse=True)
        out["subclusters"][f"{t:.4g}"] = {"count": len(sizes),
                                          "single": sum(1 for n in sizes if n == 1),
                                          "largest": [n for n in sizes if n > 1][:PROBE_SIZES]}
    lab = sweep[levels.index(split)]
    years = []
    for g in groups_by_label(lab)[:TOP_SUBCLUSTERS]:
        ys = [dates.year(str(sel.sha256[i])) for i in members[g]]
        years.append({"faces": int(len(g)), "years": year_span(ys),
                      "dominant_year": dominant_year(ys),
                      "undated": sum(1 for y in ys if y is None)})
    out["years_by_subcluster"] = years
    out["split"] = split
    return out


def probe_lines(p: dict) -> list[str]:
    if "histogram" not in p:
        return [f"probe: {p['faces']} faces in the cache, too few to probe"]
    h = p["histogram"]
    bars = "  ".join(f"{i * h['bin']:.2f}:{n}" for i, n in enumerate(h["counts"]) if n)
    out = [f"probe: {p['faces']} faces" + (f" ({p['sampled']} sampled)" if "sampled" in p
                                           else "")
           + f"; pairwise distances (median {h['median']}): {bars}"]
    for t, sc in p["subclusters"].items():
        big = sc["largest"]
        more = sc["count"] - sc["single"] > 10
        out.append(f"  sub-clusters at {t}: {sc['count']} ({', '.join(map(str, big[:10]))}"
                   f"{' ...' if more else ''}; {sc['single']} single faces)")
    for k, y in enumerate(p["years_by_subcluster"]):
        span = f"{y['years'][0]}-{y['years'][1]}" if y["years"] else "undated"
        out.append(f"  sub-cluster {k} at {p['split']}: {y['faces']} faces, years {span}, "
                   f"dominant {y['dominant_year'] or '-'}, {y['undated']} undated")
    return out


def plan_eras(root: str | Path, cache_path: str, source: str, p: ErasParams,
              progress: bool = True, cache: FaceCache | None = None) -> ErasPlan:
    """Steps 1-7 (module doc): nothing is written but the capture dates beside the cache."""
    root = Path(root).resolve()
    if not re.fullmatch(FACESET_BASE, source):
        raise ValueError(f"{source!r} is not a faceset_NNN name (an era is not split again)")
    top = runs.load_top(root)
    if source not in {e["name"] for e in top.get("facesets", [])}:
        raise ManifestError(f"{root / MANIFEST_NAME}: lists no faceset {source!r}")
    prev = live_eras(root, source)
    if prev is not None:
        raise ValueError(f"{source} was split into eras already (run {prev['run']}): "
                         f"`library undo {root} {prev['run']}` to split it again, or "
                         f"`faceset eras extend {root} {cache_path} {source}` to add new "
                         "faces to its eras")
    cache = cache if cache is not None else load_cache(cache_path)
    sel = select_faces(cache)
    m = load_manifest(root / source / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    c0 = centroid_of(m, root / source / MANIFEST_NAME, sel.embeddings.shape[1])
    index_of = {k: i for i, k in enumerate(sel.keys.tolist())}
    own = np.array(sorted(index_of[f["key"]] for f in m["faces"] if f["key"] in index_of),
                   dtype=np.int64)
    # other facesets' faces are someone else's; faces curated out anywhere stay out
    held = library_faces(root, {source})
    held.update((k, "curated out") for k in curated_out_keys(root) if k not in held)
    plan = ErasPlan(root, str(cache_path), source, p, cache=cache, sel=sel,
                    shown=display_name(root, source))

    near = np.flatnonzero(1.0 - sel.embeddings @ c0 <= p.recover)
    elsewhere = np.array([str(sel.keys[i]) in held for i in near], dtype=bool)
    recovered = near[~elsewhere]
    plan.dates = capture_dates(cache_path, sel.locations,
                               {str(s) for s in sel.sha256[np.union1d(own, recovered)]},
                               progress)
    plan.probe = probe(sel, own, plan.dates, p.split, p.engine)

    sub = subset(sel, recovered)
    bad = np.zeros(len(recovered), dtype=bool)
    for mask in quality_mask(cache, sub, p.gates()).values():
        bad |= mask
    gated = recovered[~bad]
    c1 = normalize_rows(sel.embeddings[gated].mean(axis=0, keepdims=True))[0] \
        if len(gated) else c0
    tight = gated[1.0 - sel.embeddings[gated] @ c1 <= p.tighten]
    plan.centroid = c1
    labels = cluster_faces(sel.embeddings[tight], p.split, sel.cannot_link(tight), p.engine) \
        if len(tight) else np.zeros(0, dtype=np.int64)
    groups = [tight[g] for g in groups_by_label(labels)] if len(tight) else []
    anchors = [g for g in groups if len(g) >= p.min_anchor]
    frags = [g for g in groups if len(g) < p.min_anchor]
    eras = [_era(sel, g, plan.dates, True, 0) for g in anchors]
    frag_eras = [_era(sel, g, plan.dates, False, 0) for g in frags]
    rule = attach_fragments(np.stack([e.centroid for e in eras]) if eras else np.zeros((0, 1)),
                            [e.dominant for e in eras],
                            np.stack([f.centroid for f in frag_eras]) if frag_eras
                            else np.zeros((0, sel.embeddings.shape[1])),
                            [f.dominant for f in frag_eras], p.attach, p.year_window)
    joined: dict[int, list[np.ndarray]] = {}
    alone = []
    for f, a in zip(frag_eras, rule):
        (joined.setdefault(a.nearest, []).append(f.members) if a.joined else alone.append(f))
    final = []
    for k, e in enumerate(eras):
        extra = joined.get(k, [])
        members = np.sort(np.concatenate([e.members, *extra])) if extra else e.members
        final.append(_era(sel, members, plan.dates, True, len(extra)))
    grown = list(final)                # anchor k -> its era
    final += alone
    taken: set[str] = set()
    final.sort(key=lambda e: (e.years is None, e.years or (0, 0), -e.faces))
    for e in final:
        e.name = era_name(source, e.years, taken)
    plan.eras = final
    plan.fragments = [Fragment(f.faces, f.dominant, a.distance, a.joined, a.why,
                               grown[a.nearest].name if a.nearest >= 0 else "")
                      for f, a in zip(frag_eras, rule)]
    plan.counts = {"source_faces": len(m["faces"]), "source_in_cache": int(len(own)),
                   "recovered": int(len(recovered)), "held_elsewhere": int(elsewhere.sum()),
                   "gated": int(bad.sum()), "tightened": int(len(gated) - len(tight)),
                   "kept": int(len(tight)), "subclusters": len(groups),
                   "anchors": len(anchors), "fragments": len(frags),
                   "fragments_joined": sum(1 for a in rule if a.joined)}
    return plan


# ---- carrying it out -----------------------------------------------------------------------
def export_params(manifest: dict, path: Path) -> ExportParams:
    """The export-swap parameters a faceset was made with (its manifest's ``parameters``):
    its eras are exported the same way."""
    rec = manifest.get("parameters") or {}
    known = {f.name for f in fields(ExportParams)}
    values = {k: v for k, v in rec.items() if k in known}
    if not isinstance(values.get("outlier_threshold"), (int, float)):
        raise ManifestError(f"{path}: parameters.outlier_threshold is missing; re-export the "
                            "faceset with export-swap")
    values["candidates"] = False
    return ExportParams(**values)


def _era_source(plan: ErasPlan, e: Era) -> dict:
    return {"eras_of": plan.source, "years": list(e.years) if e.years else None,
            "dominant_year": e.dominant, "undated": e.undated, "anchor": e.anchor,
            "fragments_joined": e.fragments}


def apply_eras(plan: ErasPlan, load_detector, progress: bool = True, log=print) -> dict | None:
    """Export the plan's eras as one recorded run (core/newsets.add_facesets: export-swap's
    gates and crops); eras left with fewer than ``min_era_faces`` faces go to ``_thin/``.
    Call under the folder's lock, after ``runs.finish_pending``. Returns the run's entry."""
    root, p = plan.root, plan.params
    src_path = root / plan.source / MANIFEST_NAME
    params = export_params(load_manifest(src_path, SWAP_FACESET_MANIFEST), src_path)
    person = read_label(root / plan.source)   # the operator's name for the person
    new = [NewFaceset(keys=[str(plan.sel.keys[i]) for i in e.members],
                      label=f"{person} {e.name[len(plan.source) + 1:]}" if person else None,
                      name=e.name, source=_era_source(plan, e)) for e in plan.eras]
    by_name = {e.name: e for e in plan.eras}

    def place(name: str, m: dict) -> str | None:
        return f"{THIN_DIR}/{name}" if len(m["faces"]) < p.min_era_faces else None

    def update_top(top: dict, placed: dict[str, tuple[str, dict]]) -> None:
        entries = []
        for name, (folder, m) in placed.items():
            e = by_name[name]
            plan.export_dropped[name] = dict(Counter(d.get("reason", "unknown")
                                                     for d in m["dropped"]))
            entries.append(era_entry(name, folder, len(m["faces"]), e.years, e.dominant,
                                     e.undated, e.anchor, e.fragments, m["centroid"],
                                     folder != name))
        counts = dict(plan.counts, eras=len(entries),
                      thin=sum(1 for x in entries if x["thin"]))
        top.setdefault(ERAS_SECTION, []).append(eras_record(
            runs.THIS_RUN, STEP, plan.source, plan.centroid, vars(p), entries, counts,
            plan.probe))
        top.setdefault(THIN_SECTION, []).extend(
            thin_record(runs.THIS_RUN, plan.source, x, p.min_era_faces)
            for x in entries if x["thin"])
        plan.result = entries

    res = add_facesets(root, plan.cache_path, new, params, load_detector, STEP,
                       provenance={"eras_of": plan.source}, progress=progress, log=log,
                       cache=plan.cache, place=place, update_top=update_top)
    plan.skipped = res.skipped
    return res.entry


# ---- eras extend ---------------------------------------------------------------------------
@dataclass
class ExtendPlan:
    root: Path
    cache_path: str
    source: str
    params: ErasParams
    record: dict
    counts: dict = field(default_factory=dict)
    joins: dict[str, list[int]] = field(default_factory=dict)   # era -> selection positions
    fragments: list[Fragment] = field(default_factory=list)
    dates: Dates | None = None
    cache: FaceCache | None = None
    sel: FaceSelection | None = None
    added: dict[str, int] = field(default_factory=dict)     # era -> faces added (after apply)
    gated: dict[str, int] = field(default_factory=dict)     # era -> faces the export dropped
    shown: str = ""      # "faceset_017 (Anna)": the source by its label, read when planned

    def export_lines(self) -> list[str]:
        return era_export_lines(self)

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"{c['new']} new faces within {self.params.recover} of {self.shown}'s eras "
               f"centroid (run {self.record['run']}; {c['named']} already in its eras, "
               f"{c['held_elsewhere']} held by other facesets); quality gates dropped "
               f"{c['gated']}, tightening dropped {c['tightened']}; {c['kept']} faces in "
               f"{len(self.fragments)} fragments at {self.params.split}; eras taking faces: "
               f"{', '.join(c['targets']) or 'none'}"]
        out += [f.line("left out") for f in self.fragments]
        return out

    def line(self) -> str:
        joined = sum(len(v) for v in self.joins.values())
        return (f"{joined} of {self.counts.get('kept', 0)} new faces slot into "
                f"{len(self.joins)} eras of {self.shown}")

    def done_line(self) -> str:
        added = ", ".join(f"{k} +{v}" for k, v in self.added.items() if v) or "none"
        return (f"faces added: {added}" + (f"; {sum(self.gated.values())} dropped by the "
                                           "export's gates" if any(self.gated.values())
                                           else ""))


def era_folders(root: Path, record: dict) -> dict[str, tuple[str, bool]]:
    """Era name -> (folder, thin) of the eras of ``record`` still on disk."""
    return {e["name"]: (e["folder"], e["thin"]) for e in record["eras"]
            if (root / e["folder"] / MANIFEST_NAME).is_file()}


def plan_extend(root: str | Path, cache_path: str, source: str, p: ErasParams,
                progress: bool = True, cache: FaceCache | None = None) -> ExtendPlan:
    """Which faces of the cache that no era of ``source`` names yet slot into which era
    (the module doc); nothing is written but the capture dates beside the cache."""
    root = Path(root).resolve()
    rec = live_eras(root, source)
    if rec is None:
        raise ValueError(f"{source} has no eras in {root}: run `faceset eras build {root} "
                         f"{cache_path} {source}` first")
    cache = cache if cache is not None else load_cache(cache_path)
    sel = select_faces(cache)
    plan = ExtendPlan(root, str(cache_path), source, p, rec, cache=cache, sel=sel,
                      shown=display_name(root, source))
    folders = era_folders(root, rec)
    listed = {e["name"] for e in runs.load_top(root).get("facesets", [])}
    manifests = {n: load_manifest(root / f / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
                 for n, (f, _) in folders.items()}
    named = {e["key"] for m in manifests.values() for e in m["faces"] + m["dropped"]
             if e.get("key")}
    held = library_faces(root, {source} | set(folders))
    held.update((k, "curated out") for k in curated_out_keys(root) if k not in held)
    c1 = np.asarray(rec["centroid"], np.float32)
    if len(c1) != sel.embeddings.shape[1]:
        raise ManifestError(f"{root / MANIFEST_NAME}: eras[].centroid has {len(c1)} values, "
                            f"the cache's embeddings {sel.embeddings.shape[1]}")
    c1 = c1 / (np.linalg.norm(c1) or 1.0)
    near = np.flatnonzero(1.0 - sel.embeddings @ c1 <= p.recover)
    keys = sel.keys[near].tolist()
    is_named = np.array([k in named for k in keys], dtype=bool)
    is_held = np.array([k in held and k not in named for k in keys], dtype=bool)
    new = near[~is_named & ~is_held]
    targets = [n for n, (_, thin) in folders.items() if not thin and n in listed]
    era_shas = {n: [f["sha256"] for f in manifests[n]["faces"] if f.get("sha256")]
                for n in targets}
    plan.dates = capture_dates(cache_path, sel.locations,
                               {str(s) for s in sel.sha256[new]}
                               | {s for v in era_shas.values() for s in v}, progress)
    bad = np.zeros(len(new), dtype=bool)
    for mask in quality_mask(cache, subset(sel, new), p.gates()).values():
        bad |= mask
    gated = new[~bad]
    tight = gated[1.0 - sel.embeddings[gated] @ c1 <= p.tighten]
    labels = cluster_faces(sel.embeddings[tight], p.split, sel.cannot_link(tight), p.engine) \
        if len(tight) else np.zeros(0, dtype=np.int64)
    frags = [_era(sel, tight[g], plan.dates, False, 0) for g in groups_by_label(labels)] \
        if len(tight) else []
    dim = sel.embeddings.shape[1]
    cents = np.stack([centroid_of(manifests[n], root / folders[n][0] / MANIFEST_NAME, dim)
                      for n in targets]) if targets else np.zeros((0, dim), np.float32)
    years = [dominant_year([plan.dates.year(s) for s in era_shas[n]]) for n in targets]
    rule = attach_fragments(cents, years, np.stack([f.centroid for f in frags]) if frags
                            else np.zeros((0, dim), np.float32), [f.dominant for f in frags],
                            p.attach, p.year_window)
    for f, a in zip(frags, rule):
        target = targets[a.nearest] if a.nearest >= 0 else ""
        plan.fragments.append(Fragment(f.faces, f.dominant, a.distance, a.joined, a.why,
                                       target))
        if a.joined:
            plan.joins.setdefault(target, []).extend(int(i) for i in f.members)
    plan.counts = {"new": int(len(new)), "named": int(is_named.sum()),
                   "held_elsewhere": int(is_held.sum()), "gated": int(bad.sum()),
                   "tightened": int(len(gated) - len(tight)), "kept": int(len(tight)),
                   "fragments": len(frags), "targets": targets}
    return plan


def apply_extend(plan: ExtendPlan, load_detector, progress: bool = True,
                 log=print) -> dict | None:
    """Add the planned faces to their eras as one recorded run: export-swap's gates on each
    era's faces old and new (a new face goes when the gates drop it, or when it shows a photo
    the era has or is a near duplicate of a face it has: the faces there stay as they are),
    the crops built under ``_added/<tag>/`` and moved into the era's faces/ (numbered past
    its highest), all its faces re-ranked by score, its centroid the mean of its faces, its
    bundles rebuilt. Call under the folder's lock after ``runs.finish_pending``."""
    root, cache, sel = plan.root, plan.cache, plan.sel
    if not plan.joins:
        return None
    index_of = {k: i for i, k in enumerate(sel.keys.tolist())}
    folders = era_folders(root, plan.record)
    joins: list[Joining] = []
    for name, new in sorted(plan.joins.items()):
        path = root / folders[name][0] / MANIFEST_NAME
        m = load_manifest(path, SWAP_FACESET_MANIFEST)
        params = export_params(m, path)
        old = [index_of[f["key"]] for f in m["faces"] if f["key"] in index_of]
        members = np.array(old + sorted(set(new) - set(old)), dtype=np.int64)
        quality = [None] * len(sel)
        for i in members:
            quality[i] = face_quality(cache_row(cache.faces, sel.rows[i]), params.out_size,
                                      params.pad_ratio)
        centroid, kept, dropped = select_for_swap(cache, sel, members, quality, params)
        new_pos = set(range(len(old), len(members)))
        old_sha = {str(sel.sha256[i]) for i in old}
        old_emb = sel.embeddings[old] if old else np.zeros((0, sel.embeddings.shape[1]))
        keep, drop = [], [e for e in dropped if e.get("key") in
                          {str(sel.keys[members[k]]) for k in new_pos}]
        for k in kept:
            if k not in new_pos:
                continue
            i = members[k]
            entry = plan_entry(cache, sel, i, quality[i], 1.0 - sel.embeddings[i] @ centroid)
            if str(sel.sha256[i]) in old_sha:
                drop.append(dict(entry, reason="same_source"))
            elif len(old_emb) and float(np.max(old_emb @ sel.embeddings[i])) >= \
                    1.0 - params.dup_distance:
                drop.append(dict(entry, reason="near_duplicate"))
            else:
                keep.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]),
                                    name, entry, quality[i].score))
        joins.append(Joining(name, old, keep, drop, params))
    # crops, under _added/<tag>/ (a digest of the plan: a re-run after a kill reuses them),
    # each era's new faces a small faceset folder of their own until the run moves them in
    tag = "extend-" + hashlib.sha256(json.dumps(
        {"root": str(root), "run": plan.record["run"],
         "faces": sorted((pl.target, pl.key) for j in joins for pl in j.keep)}
    ).encode()).hexdigest()[:12]
    built_rel = build_joined(root, tag, cache, plan.cache_path, sel, joins, None,
                             load_detector, STEP_EXTEND, progress, source=plan.source)
    # one recorded run: the crops move in, the eras' manifests and bundles are rewritten
    ch, bodies = joined_changes(root, built_rel, joins, sel, STEP_EXTEND,
                                folders={j.name: folders[j.name][0] for j in joins},
                                gated_key="eras_extend_run")
    for name, body in bodies.items():
        plan.added[name] = body["history"][-1]["added"]
        plan.gated[name] = body["history"][-1]["dropped"]

    def record_extension(new_top: dict) -> None:
        for rec in new_top.get(ERAS_SECTION, []):
            if rec["run"] == plan.record["run"] and rec["source"] == plan.source:
                rec.setdefault("extended", []).append(
                    {"run": runs.THIS_RUN, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "added": dict(plan.added), "dropped": dict(plan.gated),
                     "left_out": sum(f.faces for f in plan.fragments if not f.joined),
                     "parameters": vars(plan.params)})
                for era in rec["eras"]:
                    if era["name"] in bodies:
                        era["faces"] = len(bodies[era["name"]]["faces"])

    counts = {"eras": len(joins), "added": sum(plan.added.values()),
              "dropped": sum(plan.gated.values())}
    return runs.commit(root, STEP_EXTEND, ch.after, ch.changed, counts, log, moves=ch.moves,
                       rebuild=ch.rebuild, listing=ch.listing, update=record_extension)
