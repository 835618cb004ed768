"""Options and helpers several commands share (model options, thresholds, summaries)."""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from ..io.materialize import LINK_MODES, place


def default_backend():
    """The default backend's class: its model pack and model folder. (Imported when a
    command adds its model options, not with this module: a command whose parser has none
    loads no numpy for its --help.)"""
    from ..backends import backend_class

    return backend_class()


def defaults(fn) -> dict:
    """Default value of each keyword parameter of ``fn`` (a function or a dataclass): a
    command's defaults are read from the step it runs, never written twice."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


# help of every CACHE positional
CACHE_HELP = "face-sets cache file (.npz) that `embed` made"


def add_model_options(p: argparse.ArgumentParser) -> None:
    from ..backends import DEFAULT_DET_SIZE

    backend = default_backend()
    g = p.add_argument_group("model")
    g.add_argument("--model", default=backend.DEFAULT_MODEL,
                   help="InsightFace model pack name, or a folder of its ONNX files "
                        f"(default {backend.DEFAULT_MODEL})")
    g.add_argument("--model-root", default=None,
                   help=f"folder holding models/<name>/ (default {backend.DEFAULT_MODEL_ROOT})")
    g.add_argument("--providers", default=None,
                   help="ONNX Runtime providers, comma-separated (default: the best "
                        "available of DirectML, CUDA, CoreML, CPU)")
    g.add_argument("--det-size", type=int, default=DEFAULT_DET_SIZE,
                   help="detector input size")


def add_cache_model_options(p: argparse.ArgumentParser, what: str = "the cache") -> None:
    """Model options of a command that reads what an earlier embed made: by default the
    pack that made it (its name and the folder it was loaded from)."""
    add_model_options(p)
    p.set_defaults(model=None)
    for a in p._actions:
        if a.dest == "model":
            a.help = (f"InsightFace model pack name, or a folder of its ONNX files (default: "
                      f"the pack that made {what}, from the folder it was loaded from)")


def cache_model(args, meta: dict, where: str) -> tuple[str, str | None, str]:
    """(model, model_root, note) for a command reading ``where`` (a cache or a manifest)
    whose ``meta`` names the model: the flags when given, else the recorded pack folder when
    it still holds the pack, else the recorded name under --model-root (or the default root).
    ``note`` says what was recorded, for an error when the pack cannot be loaded."""
    if args.model:
        return args.model, args.model_root, ""
    name = meta.get("model") if isinstance(meta.get("model"), str) else None
    if not name:
        default = default_backend().DEFAULT_MODEL
        return default, args.model_root, (
            f"{where}: no model recorded, so the default pack {default} was "
            "tried (pass --model)")
    pack_dir = meta.get("pack_dir")
    if isinstance(pack_dir, str) and args.model_root is None:
        d = Path(pack_dir)
        if d.is_dir() and d.name == name and any(d.glob("*.onnx")):
            return str(d), None, f"{where} was made with pack {d}"
        return name, None, (f"{where} was made with model '{name}' loaded from {pack_dir}, "
                            "which is gone; pass --model / --model-root")
    return name, args.model_root, f"{where} was made with model '{name}'"


def recorded_model(args, records: list[tuple[dict, str]]) -> str:
    """Fill ``args.model`` / ``args.model_root`` of a command whose --model was not given
    from the first record (meta with ``model`` and ``pack_dir``, and what it is: a cache,
    a library) that names a model: its name, under the folder it was loaded from when that
    still holds the pack (--model-root, when given, wins over the recorded folder); else
    the default pack. Returns a note for the summary ("" when the flag was given)."""
    if args.model is not None:
        return ""
    named = [(meta, where) for meta, where in records
             if isinstance(meta.get("model"), str) and meta["model"]]
    if not named:
        args.model = default_backend().DEFAULT_MODEL
        return ""
    name, where = named[0][0]["model"], named[0][1]
    args.model = name
    for meta, _ in named:   # the first record of that pack that knows its folder
        pack_dir = meta.get("pack_dir")
        if meta["model"] != name or args.model_root is not None \
                or not isinstance(pack_dir, str):
            continue
        d = Path(pack_dir)
        if d.name == name and d.parent.name == "models" and any(d.glob("*.onnx")):
            args.model_root = str(d.parent.parent)
            break
    return (f"model {name}" + (f" from {args.model_root}" if args.model_root else "")
            + f" (recorded by {where})")


def library_model(args, meta: dict, where: str, lib) -> str:
    """--model not given and the cache ``meta`` does not know its pack's folder (a worker
    filled it): the pack the library ``lib`` (core/settings.LibrarySettings) recorded, so a
    command loads the same pack without --model-root again. Returns a note ("" when the
    flag was given or the cache's own record is used by ``load_for``)."""
    if args.model is not None or isinstance(meta.get("pack_dir"), str) or not lib.model:
        return ""
    return recorded_model(args, [(meta, where), ({"model": lib.model,
                                                  "pack_dir": lib.pack_dir}, str(lib.path))])


def library_inputs(args, step: str):
    """The head of a command that adds a cache's faces to a library (import, discover,
    grow): the library folder (``args.swap_ready``, resolved), the cache (``args.cache``)
    and the library's settings, after saying which model pack serves them. Returns
    (root, cache, settings)."""
    from ..core.settings import library_settings
    from ..formats.cache import load_cache

    root = Path(args.swap_ready).resolve()
    cache = load_cache(args.cache)
    lib = library_settings(root)
    note = library_model(args, cache.meta, args.cache, lib)
    if note:
        say(f"{step}: {note}")
    return root, cache, lib


def used_pack_dir(args) -> str | None:
    """The folder of the pack the model options name, when it is here (what a library
    records when its cache does not know it, e.g. a cache filled by a worker)."""
    if not args.model:
        return None
    direct = Path(args.model).expanduser()
    d = direct if direct.is_dir() else (Path(args.model_root).expanduser() / "models"
                                        / args.model if args.model_root else None)
    return str(d.resolve()) if d is not None and d.is_dir() else None


def load_for(args, meta: dict, where: str, **kw):
    """load_backend for the pack ``cache_model`` picks; a failure names what was recorded."""
    from ..backends import BackendError, load_backend

    model, root, note = cache_model(args, meta, where)
    try:
        return load_backend(model, root, args.providers, args.det_size, **kw)
    except BackendError as exc:
        raise BackendError(f"{note}: {exc}" if note else str(exc)) from None


def backend_loader(args):
    """A zero-argument function that loads the backend the model options name."""
    def load():
        from ..backends import load_backend
        return load_backend(args.model, args.model_root, args.providers, args.det_size)
    return load


def add_engine_option(p: argparse.ArgumentParser) -> None:
    from ..engine import ENGINES, cluster_faces

    p.add_argument("--engine", default=defaults(cluster_faces)["engine"],
                   choices=["auto"] + sorted(ENGINES),
                   help="clustering engine (auto: by number of faces)")


def add_merge_ratio_option(p: argparse.ArgumentParser) -> None:
    from ..steps.cluster import run_cluster
    ratio = defaults(run_cluster)["merge_ratio"]
    p.add_argument("--merge-ratio", type=float, default=ratio,
                   help="after average linkage, merge clusters whose centroids are within "
                        f"this times the cluster threshold (default {ratio}; 0: no merge; "
                        "docs/clustering.md)")


def add_link_option(p: argparse.ArgumentParser) -> None:
    link = defaults(place)["link"]
    p.add_argument("--link", default=link, choices=LINK_MODES,
                   help=f"how photos are placed in output folders (default {link})")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (summaries are still printed)")


def say(msg: str) -> None:
    """A summary line for the operator (stdout; progress bars go to stderr)."""
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def refresh_report(*outs) -> None:
    """Rewrite index.html (and its thumbnails) of each output folder after a command changed
    it (formats/report.py)."""
    from ..formats.report import write_report

    for out in outs:
        if out is not None:
            write_report(out)


def after_run(func, *outs_of):
    """``func`` (a command's run), then the report of the folders ``outs_of(args)`` names,
    unless it was a dry run."""
    def run(args) -> int:
        rc = func(args)
        if not getattr(args, "dry_run", False):
            refresh_report(*[f(args) for f in outs_of])
        return rc
    return run


def swap_ready_meta(root) -> dict:
    """What the threshold resolver reads: the export's model, and the thresholds calibrated
    for its cache when that cache is still there."""
    from ..core.runs import load_top
    from ..formats.cache import cache_exists, load_cache

    top = load_top(root)
    meta = {"model": top.get("model")}
    cache = top.get("cache")
    if isinstance(cache, str) and cache and cache_exists(cache):
        cmeta = load_cache(cache).meta
        meta["thresholds"] = cmeta.get("thresholds") or {}
        if cmeta.get("estimate"):   # thresholds estimated from that cache (steps/estimate.py)
            meta["estimate"] = cmeta["estimate"]
    return meta


def recorded_run(root, step: str, plan, apply, dry_run: bool, before=None, settings=None):
    """core/library.Library.operation for a command: its lines printed with ``say``;
    ``settings``: what its flags chose, recorded in the library by its run.
    Returns (plan, entry)."""
    from ..core.library import Library

    return Library(root, say).operation(step, plan, apply, dry_run, before, settings=settings)
