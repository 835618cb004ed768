"""The command line: argparse subcommands, each a thin module in facesets/commands/.

A command module has ``register(subparsers)``, which adds its parser and sets ``func``;
``func(args)`` returns the exit code. Known failures (bad input, missing model, a held
lock...) become one ``error:`` line and a non-zero exit; FACESETS_DEBUG=1 shows tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .commands.common import use_help_formatter
from .runtime.jobs import EXIT_ERROR, EXIT_INTERRUPTED

# modules under facesets.commands, in the order `--help` lists them
COMMANDS = [
    # the pipeline: photos -> cache -> persons -> facesets -> bundles
    "embed", "cluster", "refine", "dedup", "enrich", "extend", "export-swap", "verify-fsz",
    "run", "audit-multiface", "calibrate",
    # identity operations on a swap-ready library (recorded runs: history, undo)
    "import-folders", "discover", "consolidate", "split", "eras", "dedup-optimize",
    "rename", "drop-faces", "move-face", "quarantine", "history", "undo",
    # see the result
    "report", "review",
    # more sources and filters
    "immich", "video", "occlusion"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sort_faces.py",
        description="Sort a photo library by person and build face sets for face-swap tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"facesets.commands.{name.replace('-', '_')}").register(sub)
    use_help_formatter(parser)   # every default shown, descriptions as written
    return parser


def main(argv: list[str] | None = None) -> int:
    from .backends.base import BackendError
    from .core.thresholds import ThresholdError
    from .formats.cache import CacheError
    from .formats.manifest import ManifestError
    from .io.fsutil import LockError, discard_unfinished, error_line

    args = build_parser().parse_args(argv)
    known = (BackendError, CacheError, LockError, ManifestError, ThresholdError,
             FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
             ValueError)
    try:
        try:
            return int(args.func(args) or 0)
        except BaseException:
            discard_unfinished()   # a failed command leaves no half-built folder behind
            raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except known as exc:
        if os.environ.get("FACESETS_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:   # a full disk: one line naming the file; any other: a traceback
        line = error_line(exc)
        if line is None or os.environ.get("FACESETS_DEBUG"):
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_ERROR
