"""The library's settings and the one resolver every command uses for them.

A swap-ready library records what it was built with in its top-level manifest's
``settings`` (formats/swapset.py, docs/manifest-format.md "Library settings"): the model and
the folder its pack was loaded from, refine's and export-swap's gates, and the thresholds.
export-swap (alone, or as a step of `run` and of `immich finalize`) writes them; every
command that takes these settings reads them, in this order:

  the command-line flag > the library > calibrated / recorded in the cache > the model
  table (core/thresholds.py) > the step's default (its Params dataclass)

A gate (min face size, min photos...) comes from the flag, else the library, else the
step's default. A threshold recorded in the library counts when it was chosen for it (a
flag, then or at an earlier command): one that came from the model table or the cache is
resolved again from the cache, so a later ``calibrate --save`` is not shadowed. A flag that
differs from the library's value is used and said in the command's summary
(``Resolved.notes``); export-swap records it as the library's new setting. Every
operation that grows the library (import, discover, grow, `run` on a library) records the
values its flags gave (``flag_choices``, in the run it commits) where the library has not
chosen its own: a library made by `library import` and grown with flags keeps them
without their being passed again, while a one-off override stays the run's.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..formats.manifest import SWAP_MANIFEST, ManifestError, load_manifest
from ..formats.swapset import (CHOSEN_SOURCES, MANIFEST_NAME, SETTINGS_GATES, read_settings,
                               settings_section)
from .refinement import RefineParams
from .thresholds import (DERIVED_FROM_CLUSTER, FLAGS, MODEL_THRESHOLDS, derived, resolve_with_source,
                         scaled)

# each gate's flag, as summaries name it
GATE_FLAGS = {name: "--" + name.replace("_", "-") for name in SETTINGS_GATES}


def gate_defaults() -> dict:
    """Every gate's default, read from the step that owns it (RefineParams, ExportParams)."""
    from .swapexport import ExportParams

    out = {}
    for cls in (RefineParams, ExportParams):
        for f in fields(cls):
            if f.name in SETTINGS_GATES and f.name not in out:
                out[f.name] = f.default
    return out


@dataclass
class LibrarySettings:
    """What a library recorded (empty for a folder that is no library yet)."""
    path: Path | None = None
    model: str | None = None
    pack_dir: str | None = None
    gates: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)


def library_settings(root: str | os.PathLike | None, on_error=None) -> LibrarySettings:
    """The settings the swap-ready library ``root`` recorded. A library exported before
    face-sets recorded them gives the export parameters its manifest holds; a folder without
    a top-level manifest gives none. A damaged manifest raises ManifestError, unless
    ``on_error`` is given (a re-export, which writes them again): it is called with the
    message and no settings are used."""
    if root is None:
        return LibrarySettings()
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return LibrarySettings()
    try:
        top = load_manifest(path, SWAP_MANIFEST)
        s = read_settings(top, path)
    except (ManifestError, ValueError) as exc:
        if on_error is None:
            raise
        on_error(f"{exc} (its settings are not used; this export writes them again)")
        return LibrarySettings()
    if s is not None:
        return LibrarySettings(path, s["model"], s["pack_dir"], s["gates"], s["thresholds"],
                               s["sources"])
    params = top.get("parameters") if isinstance(top.get("parameters"), dict) else {}
    gates = {k: SETTINGS_GATES[k](v) for k, v in params.items()
             if k in SETTINGS_GATES and _number(v)}
    model = top.get("model") if isinstance(top.get("model"), str) else None
    return LibrarySettings(path, model, None, gates, {},
                           {f"gate:{k}": "library" for k in gates})


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and v >= 0


@dataclass
class Resolved:
    """Settings resolved for one command: ``sources`` ("gate:NAME" / "threshold:NAME" ->
    flag, library or default) and ``notes`` (summary words: what came from the library, and
    every flag that overrides it)."""
    sources: dict
    notes: list[str]

    def line(self) -> str:
        return "; ".join(self.notes)


def resolve_settings(args, lib: LibrarySettings, thresholds: dict[str, str] | None = None,
                     skip: tuple[str, ...] = (), meta: dict | None = None) -> Resolved:
    """Fill ``args`` in place (a None attribute is a flag not given): each gate it has (its
    flag, else the library's, else the step's default) and each threshold of
    ``thresholds`` (name -> argparse dest) the library chose (a flag of an earlier run), or
    only recorded when the cache (``meta``) has no calibrated value and its model no table
    value (``recorded_fallback``); the thresholds left None are resolved later from the
    cache and the model table (``library_threshold``). A command's Params built from
    ``args`` then use them. ``skip``: attributes of ``args`` named like a gate that mean
    something else there."""
    defaults = gate_defaults()
    sources, from_lib, overrides = {}, [], []
    for name in (n for n in SETTINGS_GATES if hasattr(args, n) and n not in skip):
        flag, have = getattr(args, name), lib.gates.get(name)
        if flag is not None:
            value, source = flag, "flag"
            if have is not None and float(have) != float(flag):
                overrides.append(f"{GATE_FLAGS[name]} {flag} (the library's {have})")
        elif have is not None:
            # a value the library only took from the default stays "default" while it is
            value, source = have, ("default" if have == defaults[name] and lib.sources.get(
                f"gate:{name}") == "default" else "library")
            if have != defaults[name]:   # worth saying: not what the step would use
                from_lib.append(f"{name} {have}")
        else:
            value, source = defaults[name], "default"
        setattr(args, name, value)
        sources[f"gate:{name}"] = source
    for name, dest in (thresholds or {}).items():
        flag, have = getattr(args, dest), lib.thresholds.get(name)
        chosen = have is not None and lib.sources.get(f"threshold:{name}") in CHOSEN_SOURCES
        if flag is not None:
            sources[f"threshold:{name}"] = "flag"
            if chosen and float(have) != float(flag):
                overrides.append(f"{FLAGS[name]} {flag} (the library's {have})")
        elif chosen:
            setattr(args, dest, float(have))
            sources[f"threshold:{name}"] = "library"
            from_lib.append(f"{name} threshold {have}")
        elif meta is not None and (recorded := recorded_fallback(name, meta, lib)) is not None:
            setattr(args, dest, recorded)
            sources[f"threshold:{name}"] = RECORDED
            from_lib.append(f"{name} threshold {have} (recorded)")
    notes = []
    if from_lib:
        notes.append(f"settings from the library {lib.path}: {', '.join(from_lib)}")
    if overrides:
        notes.append("override (used, and recorded): " + ", ".join(overrides))
    return Resolved(sources, notes)


# the source of a threshold the library recorded without choosing it (from its refine
# manifest, say), used where nothing else knows one: not a choice, so a later
# `calibrate --save` still wins
RECORDED = "library (recorded)"


def recorded_fallback(name: str, meta: dict, lib: LibrarySettings) -> float | None:
    """The library's recorded threshold ``name`` when the cache (``meta``) has no calibrated
    one and its model no table value: what the library was built with (e.g. the thresholds
    refine was given, recorded from its manifest) beats asking for the flag again or an
    estimate. None otherwise."""
    have = lib.thresholds.get(name)
    if have is None or (meta.get("thresholds") or {}).get(name) is not None \
            or name in (MODEL_THRESHOLDS.get(meta.get("model", "?")) or {}):
        return None
    return float(have)


def flag_choices(args, resolved: Resolved, thresholds: dict[str, str] | None = None,
                 *more: tuple[str, float, str]) -> dict[str, float]:
    """What a command took from its flags, for the library to record (a library made by
    `library import`, or grown with a flag, keeps it for the next command): each gate and
    each threshold of ``thresholds`` (name -> argparse dest) that ``resolved`` says came
    from a flag, and each of ``more`` (name, value, source) whose source is "flag"."""
    out = {}
    for key, source in resolved.sources.items():
        kind, _, name = key.partition(":")
        if source != "flag":
            continue
        if kind == "gate":
            out[key] = getattr(args, name)
        elif name in (thresholds or {}):
            out[key] = getattr(args, thresholds[name])
    out.update({f"threshold:{name}": value for name, value, source in more
                if source == "flag"})
    return out


def library_threshold(name: str, meta: dict, flag: float | None, lib: LibrarySettings,
                      *extra: tuple[float | None, str]) -> tuple[float, str]:
    """(value, source) of threshold ``name``: the flag, else the library's own choice (a
    threshold it recorded from a flag), else core/thresholds' order (calibrated in the
    cache, ``extra``, the library's recorded value where the model has no table value, the
    model table, the estimate). A threshold derived from the cluster
    distance (import-folders', discover's, eras'...) is scaled from the library's chosen
    clustering threshold when the cache has no calibrated one and the model no table value
    (a model without built-in thresholds that `run` was given them for)."""
    if flag is not None:
        return float(flag), "flag"
    if name in lib.thresholds and lib.sources.get(f"threshold:{name}") in CHOSEN_SOURCES:
        return float(lib.thresholds[name]), "library"
    extras = list(extra)
    recorded = recorded_fallback(name, meta, lib)
    if recorded is not None:
        extras.append((recorded, RECORDED))
    if name in DERIVED_FROM_CLUSTER:
        base = next((lib.thresholds[n] for n in ("cluster", "initial")
                     if n in lib.thresholds), None)
        calibrated = (meta.get("thresholds") or {}).get("cluster")
        table = MODEL_THRESHOLDS.get(meta.get("model", "?")) or {}
        if base is not None and calibrated is None and name not in table:
            extras.append((scaled(name, float(base)),
                           "derived from the library's cluster threshold"))
        extras.append(derived(name, meta))
    return resolve_with_source(name, meta, None, *extras)


def export_settings(meta: dict, params, refine_parameters: dict,
                    resolved: Resolved | None, threshold_sources: dict[str, str],
                    cluster: float | None = None,
                    lib: LibrarySettings | None = None, pack_dir: str | None = None) -> dict:
    """The ``settings`` section export-swap writes: the model and pack folder of the cache
    (``meta``), export's gates (``params``, an ExportParams) and refine's (the refine
    manifest's ``parameters``), the thresholds both used, and where each came from
    (``resolved``: what this command resolved; else "refine manifest"); ``cluster``: the
    clustering distance of `run` when it was chosen (a flag, or the library's). A threshold
    the library ``lib`` had chosen stays chosen: kept as "library" when this export used the
    same value, and carried over when this export does not know it (export-swap alone does
    not see `run`'s clustering distance). ``pack_dir``: the pack folder this command
    loaded, recorded when the cache does not know its own (a worker filled it)."""
    known = (resolved.sources if resolved else {})
    gates, sources, thresholds = {}, {}, {}
    for name in SETTINGS_GATES:
        value = getattr(params, name, None)
        if value is None:
            value = refine_parameters.get(name)
            default_source = "refine manifest"
        else:
            default_source = "default"
        if _number(value):
            gates[name] = value
            sources[f"gate:{name}"] = known.get(f"gate:{name}", default_source)
    for name, key in (("initial", "initial_threshold"), ("merge", "merge_threshold"),
                      ("outlier", "outlier_threshold")):
        if _number(refine_parameters.get(key)):
            thresholds[name] = refine_parameters[key]
            sources[f"threshold:{name}"] = known.get(f"threshold:{name}", "refine manifest")
    if cluster is not None and known.get("threshold:cluster") in CHOSEN_SOURCES:
        thresholds["cluster"] = cluster
        sources["threshold:cluster"] = known["threshold:cluster"]
    thresholds["swap_outlier"] = params.outlier_threshold
    if params.candidates and params.candidate_match_threshold is not None:
        thresholds["candidate_match"] = params.candidate_match_threshold
    for name in ("swap_outlier", "candidate_match"):
        if name in thresholds:
            sources[f"threshold:{name}"] = known.get(f"threshold:{name}",
                                                     threshold_sources.get(name, "default"))
    for name, value in (lib.thresholds.items() if lib else ()):
        if lib.sources.get(f"threshold:{name}") not in CHOSEN_SOURCES:
            continue
        if name not in thresholds:
            thresholds[name] = value
            sources[f"threshold:{name}"] = "library"
        elif sources[f"threshold:{name}"] not in CHOSEN_SOURCES and \
                float(thresholds[name]) == float(value):
            sources[f"threshold:{name}"] = "library"
    if isinstance(meta.get("pack_dir"), str):
        pack_dir = meta["pack_dir"]
    elif pack_dir is None and lib is not None:
        pack_dir = lib.pack_dir
    model = meta.get("model") if isinstance(meta.get("model"), str) else None
    return settings_section(model, pack_dir, gates, thresholds, sources)
