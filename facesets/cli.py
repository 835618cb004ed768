"""The command line: argparse subcommands, each a thin module in facesets/commands/.

A command module has ``register(subparsers)``, which adds its parser and sets ``func``;
``func(args)`` returns the exit code. Known failures (bad input, missing model, a held
lock...) become one ``error:`` line and a non-zero exit; FACESETS_DEBUG=1 shows tracebacks.

COMMANDS holds every command's help line: only the module of the command that runs is
imported. It reads its defaults from its step, so the step's modules are imported too, but
they import OpenCV, ONNX Runtime and torch only inside the functions that use them:
`COMMAND --help` loads none of those, `--help` not even numpy (tests/test_cli_lazy.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

PIPELINE = "the pipeline: photos -> cache -> persons -> facesets -> bundles"
LIBRARY = "identity operations on a swap-ready library (recorded runs: history, undo)"
SEE = "see the result"
MORE = "more sources and filters"

# command -> (help line, group), in the order `--help` lists them; the module is
# facesets.commands.<command with _ for ->, imported only when that command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("detect and embed faces of a photo folder into a cache", PIPELINE),
    "cluster": ("group cached faces into person folders", PIPELINE),
    "refine": ("build clean facesets from the cache", PIPELINE),
    "dedup": ("find byte-identical and visually near-duplicate photos", PIPELINE),
    "enrich": ("add landmarks and head pose to every cached face", PIPELINE),
    "extend": ("add newly embedded faces to existing person folders and facesets", PIPELINE),
    "export-swap": ("swap-ready crops and .fsz bundles per faceset", PIPELINE),
    "verify-fsz": ("check that every PNG of a bundle has one face", PIPELINE),
    "run": ("the whole pipeline from a photo folder to .fsz bundles", PIPELINE),
    "audit-multiface": ("drop exported face PNGs that do not show exactly one face (via a "
                        "worker queue)", PIPELINE),
    "calibrate": ("measure thresholds on hand-sorted person folders", PIPELINE),
    "import-folders": ("hand-sorted person folders -> new facesets of a swap-ready library "
                       "(undoable)", LIBRARY),
    "discover": ("new identities in a mixed folder -> new facesets (undoable)", LIBRARY),
    "consolidate": ("merge facesets that are one person (undoable)", LIBRARY),
    "split": ("split a faceset that holds more than one person (undoable)", LIBRARY),
    "eras": ("split a faceset into facesets by era (EXIF years; undoable)", LIBRARY),
    "dedup-optimize": ("drop duplicate face PNGs of a swap-ready folder (undoable)", LIBRARY),
    "rename": ("name a faceset (NAME.txt; undoable)", LIBRARY),
    "drop-faces": ("move faces of a faceset to faces/_dropped/ (undoable)", LIBRARY),
    "move-face": ("move faces into another faceset (undoable)", LIBRARY),
    "quarantine": ("move a faceset to _quarantine/ (undoable)", LIBRARY),
    "history": ("list the recorded runs of a swap-ready folder (--keep N: prune older runs' parked copies)", LIBRARY),
    "undo": ("reverse a recorded run (see history)", LIBRARY),
    "report": ("write OUT/index.html, an overview page of an output", SEE),
    "review": ("review and fix a swap-ready folder in the browser", SEE),
    "immich": ("import an Immich library (stage, finalize, push)", MORE),
    "video": ("video targets: shots, faces, tracks, clean clips", MORE),
    "occlusion": ("filter occluded faces (masks, sunglasses, hands) out of an export "
                  "(undoable)", MORE),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Every command's help: descriptions as written, and every option's default shown
    (appended unless the help text already says it; not for flags or None defaults)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.default is None
                or action.default is argparse.SUPPRESS
                or any(w in text for w in ("(default", "default:", "model default"))):
            return text
        return text + " (default: %(default)s)"


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command under it the HelpFormatter."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_formatter(sub)


def command_module(name: str) -> str:
    return f"facesets.commands.{name.replace('-', '_')}"


def _command_list() -> str:
    """The grouped command list of the top-level help."""
    lines, group = ["commands (COMMAND --help for each):"], None
    width = max(map(len, COMMANDS)) + 2
    for name, (text, in_group) in COMMANDS.items():
        if in_group != group:
            group = in_group
            lines.append(f"\n  {group}")
        lines.append(f"    {name:<{width}}{text}")
    return "\n".join(lines)


def program_name() -> str:
    """What the user typed: `face-sets` (the installed command, the launcher) or
    sort_faces.py."""
    name = os.path.basename(sys.argv[0] if sys.argv else "")
    return "face-sets" if name.startswith("face-sets") else "sort_faces.py"


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser, with the full parsers of ``commands`` (None: all of them); every other
    command is a stub that only names it, so that its module is not imported."""
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Sort a photo library by person and build face sets for face-swap tools.",
        epilog=_command_list())
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # the commands are listed by the epilog, by group: their parsers are added without help
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="the command to run (listed below)")
    sub.required = True
    for name in COMMANDS:
        if commands is None or name in commands:
            importlib.import_module(command_module(name)).register(sub)
        else:
            sub.add_parser(name, add_help=False)
    use_help_formatter(parser)   # every default shown, descriptions as written
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The command ``argv`` runs: its first word (the top level has options without values)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser({chosen_command(argv)}).parse_args(argv)
    from .backends.base import BackendError
    from .core.thresholds import ThresholdError
    from .formats.cache import CacheError
    from .formats.manifest import ManifestError
    from .io.fsutil import LockError, discard_unfinished, error_line
    from .runtime.jobs import EXIT_ERROR, EXIT_INTERRUPTED

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
