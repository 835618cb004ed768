"""The typed library: ``Library``, a swap-ready folder, and ``Faceset``, one faceset in it.

A ``Faceset`` is loaded (and validated) through formats/swapset.py's reader, knows its
bundle names (``bundle_stem``: the one naming rule of every command) and its faces and
dropped faces, and its operations return NEW manifest bodies (the loaded body is never
changed), so a recorded run (core/runs.py) can keep the previous bytes and install the new
ones. Steps use it instead of editing manifest dicts by hand.

``Library`` owns a swap-ready folder for a command that changes it: it takes the folder's
lock, finishes a run a kill interrupted, plans, applies, rewrites the report and prints the
summary with the run's undo line (``operation``); it reads the top-level manifest and its
facesets typed, and names a faceset by its label (``display``: "faceset_017 (Anna)").
Steps decide only what changes; how a run is committed is core/runs.py's ``commit``.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import runs
from .cohesion import with_cohesion
from ..formats.manifest import FACESET_NAME, SWAP_FACESET_MANIFEST, load_manifest
from ..formats.swapset import (MANIFEST_NAME, bundle_names, bundle_stem, bundles_entry,
                               dropped_counts, faceset_listing, read_label)
from ..io.fsutil import output_lock

Log = Callable[[str], None]


def undo_line(root: str | Path, entry: dict | None) -> str:
    """The end of a library-changing command's summary: the run's id and the command that
    undoes it (in the grouped spelling), or "nothing changed"."""
    if not entry:
        return "nothing changed"
    return f"run {entry['id']} (undo: `library undo {root} {entry['id']}`)"


class Library:
    """A swap-ready folder (export-swap's output) as one command sees it.

    ``log`` prints the operator's lines (commands pass ``say``); ``indent`` goes before the
    lines about the work (plan lines, finished runs), not before the summary line."""

    def __init__(self, root: str | Path, log: Log = print, indent: str = "  "):
        self.root = Path(root).resolve()
        self.log = log
        self.indent = indent
        self.finished: list[str] = []   # runs a kill had interrupted, finished by ``open``

    def detail(self, line: str) -> None:
        self.log(f"{self.indent}{line}")

    # ---- opening -----------------------------------------------------------------------
    @contextlib.contextmanager
    def open(self, before: Callable[[], None] | None = None,
             finish: Callable[[Path, Log], object] | None = None,
             lock: bool = True) -> Iterator["Library"]:
        """Hold the folder's lock (a second writer gets a LockError at once; ``lock``
        False: the caller holds it, as `run` does for its grow step) and finish a run a
        kill interrupted (``runs.finish_pending``, or ``finish(root, log)``: a step with
        runs of its own kind); ``self.finished`` says which. ``before()``: what to do first
        under the lock (import-folders makes a new library there)."""
        with output_lock(self.root) if lock else contextlib.nullcontext():
            if before is not None:
                before()
            done = (finish or runs.finish_pending)(self.root, self.detail)
            self.finished = list(done) if isinstance(done, list) else []
            yield self

    # ---- reading -----------------------------------------------------------------------
    @property
    def top(self) -> dict:
        """The top-level manifest, validated (ManifestError naming the file and field)."""
        return runs.load_top(self.root)

    def names(self) -> list[str]:
        """The facesets the top-level manifest lists, in its order."""
        return [e["name"] for e in self.top.get("facesets", [])]

    def facesets(self) -> list["Faceset"]:
        """The listed facesets, each loaded and validated."""
        return [Faceset.load(self.root / name) for name in self.names()]

    def faceset(self, name) -> "Faceset":
        """A listed faceset; a name that is no faceset name or not listed is refused."""
        if not is_faceset_name(name):
            raise ValueError(f"{name!r} is not a faceset name (faceset_NNN)")
        if name not in self.names():
            raise ValueError(f"{self.root / MANIFEST_NAME}: no faceset {name} (see its "
                             "facesets[])")
        return Faceset.load(self.root / name)

    def label(self, name: str) -> str | None:
        """The person's name in ``name``'s NAME.txt (None: none written)."""
        return read_label(self.root / name) if is_faceset_name(name) else None

    def display(self, name: str) -> str:
        """How plans and summaries name a faceset: "faceset_017 (Anna)", or the bare name
        while it has no label."""
        return display_name(self.root, name)

    # ---- changing ----------------------------------------------------------------------
    def undo_line(self, entry: dict | None) -> str:
        """"run X (undo: `library undo ROOT X`)" for a run's ``runs[]`` entry; "nothing
        changed" for None."""
        return undo_line(self.root, entry)

    def report(self) -> None:
        """Rewrite index.html and its sheets: the folder as it is now (formats/report.py)."""
        from ..formats.report import write_report

        write_report(self.root)

    def record(self, settings: dict[str, float] | None):
        """A context in which the run a step commits also records ``settings`` (the values
        its flags chose) in the library's settings: the next command uses them unasked.
        Nothing is written when the step has nothing to do."""
        from ..formats.swapset import with_chosen_settings

        if not settings:
            return contextlib.nullcontext()
        path = self.root / MANIFEST_NAME
        return runs.also_in_top(lambda top: with_chosen_settings(top, settings, path))

    def operation(self, step: str, plan: Callable[[], object], apply, dry_run: bool,
                  before: Callable[[], None] | None = None, *,
                  show: Callable[[object], None] | None = None,
                  resume: Callable[[list[str]], str | None] | None = None,
                  closing: Callable[[object], list[str]] | None = None,
                  done: Callable[[object], str] | None = None,
                  dry_note: str = "nothing changed",
                  settings: dict[str, float] | None = None):
        """The one sequence of every command that changes the library. ``plan()`` returns
        a plan with ``lines()`` (printed, indented; ``show(plan)`` prints it instead) and
        ``line()`` (the summary; ``done(plan)`` after apply instead); ``apply(plan,
        detail_log)`` carries it out as one recorded run and returns its ``runs[]`` entry
        (None: nothing to do). A dry run plans and prints only (no lock, nothing changed,
        "STEP (dry run, DRY_NOTE): ..."). A real one opens the library (lock, ``before()``,
        interrupted runs finished; ``resume(finished)`` may end it there with a line: the
        interrupted run was this very operation), plans, prints, applies, rewrites the
        report, prints ``closing(plan)``'s lines and "STEP: summary; run X (undo: ...)".
        ``settings``: what the command took from its flags ("gate:NAME" /
        "threshold:NAME" -> value), recorded as the library's by the run (``record``).
        Returns (plan, entry)."""
        show = show or (lambda p: [self.detail(line) for line in p.lines()])
        if dry_run:
            p = plan()
            show(p)
            self.log(f"{step} (dry run, {dry_note}): {p.line()}")
            return p, None
        with self.open(before):
            if resume is not None:
                said = resume(self.finished)
                if said:
                    self.report()       # the finished run's report, left to rewrite
                    self.log(said)
                    return None, None
            p = plan()
            show(p)
            with self.record(settings):
                entry = apply(p, self.detail)
            self.report()               # index.html shows the folder as it is now
        for line in closing(p) if closing is not None else []:
            self.log(line)
        self.log(f"{step}: {done(p) if done is not None else p.line()}; "
                 f"{self.undo_line(entry)}")
        return p, entry


def display_name(root: str | Path, name: str) -> str:
    """"faceset_017 (Anna)": a faceset's name and, when its NAME.txt has one, its label
    (what every plan and summary line says; core/library.Library.display)."""
    label = read_label(Path(root) / name) if is_faceset_name(name) else None
    return f"{name} ({label})" if label else name


def display_names(root: str | Path, names) -> dict[str, str]:
    """{name: display_name}: read when a plan is made, since a run may move NAME.txt away
    before the plan's summary is printed."""
    return {name: display_name(root, name) for name in names}


@dataclass(frozen=True)
class Faceset:
    """A faceset folder and its validated manifest (``body``; treat it as read-only)."""

    folder: Path
    body: dict

    @classmethod
    def load(cls, folder: str | Path) -> "Faceset":
        """Read ``folder/manifest.json`` (ManifestError naming the file and field)."""
        folder = Path(folder)
        return cls(folder, load_manifest(folder / MANIFEST_NAME, SWAP_FACESET_MANIFEST))

    @classmethod
    def of(cls, body: dict, folder: str | Path = ".") -> "Faceset":
        """A faceset from a body in hand (a plan's new manifest)."""
        return cls(Path(folder), body)

    @property
    def name(self) -> str:
        return self.body["name"]

    @property
    def faces(self) -> list[dict]:
        """Kept faces, in rank order."""
        return sorted(self.body["faces"], key=lambda f: f["rank"])

    @property
    def dropped(self) -> list[dict]:
        return list(self.body["dropped"])

    @property
    def bundle_stem(self) -> str:
        return bundle_stem(self.body)

    def bundle_names(self) -> dict[str, str]:
        """{"top": ..., "all": ...}: the bundle files, named by the one rule."""
        return bundle_names(self.bundle_stem, int(self.body["top_n"]))

    def listing(self) -> dict:
        """This faceset's entry in the top-level manifest's ``facesets[]``."""
        return faceset_listing(self.body)

    # ---- operations: each returns a new body -------------------------------------------
    def finished(self, body: dict) -> dict:
        """``body`` with its counts and bundle entry brought in line with its faces."""
        body["summary"]["dropped"] = dropped_counts(body["dropped"])
        body["summary"]["kept"] = len(body["faces"])
        body["bundles"] = bundles_entry(bundle_stem(body), int(body["top_n"]),
                                        len(body["faces"]))
        return with_cohesion(body)

    def dropping(self, files: dict[str, str | None], reason: str, run: str,
                 extra: dict[str, dict] | None = None) -> dict:
        """A new body with the faces ``files`` (faces/NNN.png -> where the PNG is parked,
        or None) moved from ``faces[]`` to ``dropped[]`` with ``reason`` (the gate) and
        ``run``; ``extra[file]``: fields added to that face's dropped entry."""
        extra = extra or {}
        new = copy.deepcopy(self.body)
        new["faces"] = [f for f in new["faces"] if f["file"] not in files]
        for face in self.faces:
            if face["file"] in files:
                entry = dict(face, reason=reason, run=run)
                entry.update(extra.get(face["file"], {}))   # may name its own reason
                if files[face["file"]]:
                    entry["moved_to"] = files[face["file"]]
                new["dropped"].append(entry)
        return self.finished(new)

    def without(self, files: set[str]) -> dict:
        """A new body without the faces ``files`` (moved to another faceset: not dropped;
        the others keep their rank)."""
        new = copy.deepcopy(self.body)
        new["faces"] = [f for f in new["faces"] if f["file"] not in files]
        return self.finished(new)

    def adding(self, faces: list[dict], centroid=None, faces_in: int = 0,
               dropped: list[dict] = ()) -> dict:
        """A new body with ``faces`` (entries with their new ``file``) added and every face
        re-ranked by score; ``dropped``: entries added to its ``dropped[]`` (faces a gate
        kept out), ``faces_in``: faces it was offered (added to its summary's count),
        ``centroid``: its new centroid (unit vector)."""
        new = copy.deepcopy(self.body)
        new["faces"] = new["faces"] + copy.deepcopy(faces)
        new["dropped"] = new["dropped"] + copy.deepcopy(list(dropped))
        if centroid is not None:
            new["centroid"] = [round(float(v), 6) for v in centroid]
        if faces_in:
            new["summary"]["faces_in"] = int(new["summary"].get("faces_in", 0)) + faces_in
        return self.finished(reranked(new))

    def emptied(self, key: str, record: dict, dropped: list[dict] = ()) -> dict:
        """A new body with no faces (all moved to another faceset: ``key``, e.g.
        ``merged_into``, says where, as ``record``); ``dropped``: entries added to its
        ``dropped[]``. Its bundle entry stays: the folder is parked, not rebuilt."""
        new = copy.deepcopy(self.body)
        new["faces"] = []
        new["dropped"] = new["dropped"] + copy.deepcopy(list(dropped))
        new[key] = record
        new["summary"]["kept"] = 0
        return new

    def with_section(self, key: str, value) -> dict:
        """A new body with ``key`` set to ``value`` (a record of what a run did to it:
        ``split_into``, ``split_from``...)."""
        return dict(copy.deepcopy(self.body), **{key: copy.deepcopy(value)})

    def noted(self, body: dict, step: str, **what) -> dict:
        """``body`` with a ``history[]`` entry of this run: ``step``, now, ``what``."""
        return noted(body, step, **what)


def noted(body: dict, step: str, **what) -> dict:
    """``body`` (a faceset manifest) with a ``history[]`` entry of this run (``step``, now,
    ``what``; the run's id filled in when it starts)."""
    body.setdefault("history", []).append(dict({"step": step, "when": now(),
                                                "run": runs.THIS_RUN}, **what))
    return body


def now() -> str:
    """A manifest's time stamp (local time with its offset)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def reranked(body: dict) -> dict:
    """``body`` with its faces re-ranked by score, best first (ties keep their order)."""
    body["faces"].sort(key=lambda f: -float(f.get("score") or 0.0))
    for rank, face in enumerate(body["faces"]):
        face["rank"] = rank
    return body


def is_faceset_name(name) -> bool:
    return isinstance(name, str) and bool(FACESET_NAME.fullmatch(name))


# ---- nothing dropped silently ----------------------------------------------------------------
LOSS_SHARE = 0.2   # a step that drops more than this share of an identity's faces says so


def heavy_loss(step: str, name: str, faces_in: int, dropped: list[dict],
               flags: dict[str, str]) -> str | None:
    """One summary line when the gates of ``step`` (drop reason -> the flag that sets it)
    took more than LOSS_SHARE of identity ``name``'s ``faces_in`` faces, naming per gate
    how many and the flag value that would keep them all (``dropped``: entries with
    ``reason``, ``value``, ``limit``); None otherwise."""
    lost = [e for e in dropped if e.get("reason") in flags]
    if not faces_in or len(lost) <= LOSS_SHARE * faces_in:
        return None
    parts, keep = [], []
    for gate, flag in flags.items():
        hit = [e for e in lost if e["reason"] == gate]
        if not hit:
            continue
        parts.append(f"{gate} {len(hit)}")
        values = [e["value"] for e in hit if isinstance(e.get("value"), (int, float))]
        limit = hit[0].get("limit")
        if values and isinstance(limit, (int, float)):
            # a face over an upper limit (outlier distance) needs the limit raised past
            # the largest value; a face under a lower limit (size, blur) lowered below it
            up = max(values) > limit
            want = math.ceil(max(values) * 1e4) / 1e4 if up else \
                math.floor(min(values) * 1e4) / 1e4
            keep.append(f"{flag} {want:g} or {'more' if up else 'less'} (now {limit:g})")
        else:
            keep.append(flag)
    return (f"{step}: {name} lost {len(lost)} of {faces_in} faces "
            f"({len(lost) / faces_in:.0%}) to its gates ({', '.join(parts)}); to keep them: "
            f"{', '.join(keep)}")


# ---- every face a library knows --------------------------------------------------------------
def _library_bodies(root: Path) -> list[tuple[str, str, dict]]:
    """(section, folder, manifest) of every faceset folder the swap-ready library ``root``
    lists or parked: listed (section "facesets"), merged away (``merged[]``), split
    (``split[]``), quarantined, masked or left thin (``quarantined[]``, ``masked[]``,
    ``thin_eras[]``). The folders an undo moved out (``_added/<tag>/``, ``_split/<tag>/``)
    are not the library's any more: an undone run is as if it never ran, so a later grow or
    discover offers their faces again. Nor are build folders of a run not recorded (a kill
    before it started)."""
    from ..formats.manifest import safe_member_path
    from . import runs

    top = runs.load_top(root)
    rels = [("facesets", e["name"]) for e in top.get("facesets", [])]
    for section, field_names in (("merged", None), ("split", ("moved_to",)),
                                 ("quarantined", ("moved_to",)), ("masked", ("moved_to",)),
                                 ("thin_eras", ("folder", "moved_to"))):
        for rec in top.get(section) or []:
            if not isinstance(rec, dict):
                continue
            if field_names is None:      # consolidate: one record per merge, its facesets
                rels += [(section, m.get("moved_to")) for m in rec.get("merged") or []
                         if isinstance(m, dict)]
            else:
                rels += [(section, rec.get(f)) for f in field_names]
    out, seen = [], set()
    for section, rel in rels:
        if not isinstance(rel, str) or not rel or rel in seen:
            continue
        seen.add(rel)
        folder = safe_member_path(root, rel, "a faceset folder", root / MANIFEST_NAME)
        if not (folder / MANIFEST_NAME).is_file() or folder.is_symlink():
            continue
        out.append((section, rel, load_manifest(folder / MANIFEST_NAME, SWAP_FACESET_MANIFEST)))
    return out


def known_keys(root: str | Path) -> set[str]:
    """The cache keys of every face the swap-ready library ``root`` knows: kept
    (``faces[]``) or taken out (``dropped[]``, by a gate or by hand) in any faceset it
    lists or parked (``_library_bodies``). A face none of these names is new to the
    library (`grow`)."""
    keys: set[str] = set()
    for _, _, body in _library_bodies(Path(root)):
        keys.update(f["key"] for f in body["faces"])
        keys.update(d["key"] for d in body["dropped"] if isinstance(d.get("key"), str))
    return keys


def curated_out_keys(root: str | Path) -> set[str]:
    """The faces the user (or a maintenance run: the occlusion filter, audit-multiface,
    dedup-optimize, drop-faces, the review page) took out of the library: every
    ``dropped[]`` entry that is curation (formats/swapset.curated_out), and every face of a
    faceset quarantined or masked as a whole. No operation that gathers faces from the cache
    (eras, discover, grow) may bring one back."""
    from ..formats.swapset import curated_out

    keys: set[str] = set()
    for section, _, body in _library_bodies(Path(root)):
        keys.update(d["key"] for d in body["dropped"] if curated_out(d))
        if section in ("quarantined", "masked"):
            keys.update(f["key"] for f in body["faces"])
    return keys
