"""The command line: argparse subcommands, each a thin module in facesets/commands/.

A command module has ``register(subparsers)``, which adds its parser and sets ``func``;
``func(args)`` returns the exit code. Known failures (bad input, missing model, a held
lock...) become one ``error:`` line and a non-zero exit; FACESETS_DEBUG=1 shows tracebacks.

COMMANDS is the one table of every command, group, verb and hidden alias, with its help
line (`--help` lists it by group); canonical_argv turns an alias into its command before
parsing. Only the module of the command that runs is imported. It reads its defaults from its step, so the step's modules are imported too, but
they import OpenCV, ONNX Runtime and torch only inside the functions that use them:
`COMMAND --help` loads none of those, `--help` not even numpy (tests/test_cli_lazy.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple

from . import __version__
from .runtime.program import program_name

PIPELINE = "the pipeline: photos -> cache -> persons -> facesets -> bundles"
FACESET = "faceset VERB: fix one faceset of a swap-ready library (recorded runs: undoable)"
LIBRARY = "library VERB: a swap-ready library as a whole (recorded runs: history, undo)"
QUEUES = ("queue kinds: KIND stage | score | merge | apply (a worker runs between stage and "
          "merge, e.g. on a GPU machine)")


class Command(NamedTuple):
    """One entry of COMMANDS: a command, or a group of them (``verbs``).

    help:    its line in `--help`
    group:   the heading it is listed under (top-level entries only)
    old:     today's names, hidden aliases (top-level words; for a queue kind's verb, the
             verb its module registers)
    module:  facesets.commands.<module> (default: the name with _ for -)
    verbs:   a group: its subcommands (name -> Command); a queue kind: the verbs the table
             renames (new name -> Command("", old=(the verb its module registers,)))
    words:   a queue kind or eras: the verbs its module registers, as `--help` lists them
    default: eras: the verb a bare `eras CACHE FACESET` means
    library_first: the library folder is its first positional; the old `--into SWAP_READY`
             is turned into it (with a deprecation line)
    """
    help: str
    group: str = ""
    old: tuple[str, ...] = ()
    module: str | None = None
    verbs: dict | None = None
    words: tuple[str, ...] = ()
    default: str | None = None
    library_first: bool = False


# The one table of every command name and alias, in the order `--help` lists them. A
# command's module is imported only when that command runs. Plain (help, group) pairs are
# flat commands whose module is facesets.commands.<name with _ for ->.
COMMANDS: dict[str, tuple] = {
    "embed": ("detect and embed faces of a photo folder into a cache", PIPELINE),
    "cluster": ("group cached faces into person folders", PIPELINE),
    "refine": ("build clean facesets from the cache", PIPELINE),
    "dedup": ("find byte-identical and visually near-duplicate photos", PIPELINE),
    "enrich": ("add landmarks and head pose to every cached face", PIPELINE),
    "extend": ("add newly embedded faces to existing person folders and facesets", PIPELINE),
    "export-swap": ("swap-ready crops and .fsz bundles per faceset", PIPELINE),
    "verify-fsz": ("check that every PNG of a bundle has one face", PIPELINE),
    "run": ("the whole pipeline from a photo folder to .fsz bundles", PIPELINE),
    "calibrate": ("measure thresholds on hand-sorted person folders", PIPELINE),
    "faceset": Command("fix one faceset of a swap-ready library", FACESET, verbs={
        "rename": Command("name a faceset (NAME.txt)", old=("rename",)),
        "drop": Command("move faces of a faceset to faces/_dropped/", old=("drop-faces",),
                        module="drop_faces"),
        "move": Command("move faces into another faceset (--to FACESET)",
                        old=("move-face",), module="move_face"),
        "quarantine": Command("move a faceset to _quarantine/", old=("quarantine",)),
        "split": Command("split a faceset that holds more than one person",
                         old=("split",)),
        "eras": Command("split a faceset into facesets by era (EXIF years); `faceset eras "
                        "extend` "
                        "slots new faces into them", old=("eras",),
                        words=("build", "extend"), default="build", library_first=True),
    }),
    "library": Command("a swap-ready library as a whole", LIBRARY, verbs={
        "import": Command("hand-sorted person folders -> new facesets", old=("import-folders",),
                          module="import_folders", library_first=True),
        "discover": Command("new identities in a mixed folder -> new facesets",
                            old=("discover",), library_first=True),
        "grow": Command("new faces of the cache join their facesets or become new ones"),
        "consolidate": Command("merge facesets that are one person", old=("consolidate",)),
        "dedup": Command("drop duplicate face PNGs", old=("dedup-optimize",),
                         module="dedup_optimize"),
        "history": Command("list the recorded runs (--keep N: prune older runs' parked "
                           "copies)", old=("history",)),
        "undo": Command("reverse a recorded run (see history)", old=("undo",)),
        "review": Command("review and fix it in the browser", old=("review",)),
        "report": Command("write OUT/index.html, an overview page of an output (also of "
                          "cluster's and refine's)", old=("report",)),
    }),
    "immich": Command("import an Immich library (its finalize runs the whole chain; push "
                      "writes the facesets back)", QUEUES, words=("stage", "finalize", "push")),
    "video": Command("video targets: shots, faces, tracks (merge), clean clips (apply)",
                     QUEUES, words=("scenes", "stage", "merge", "apply"),
                     verbs={"merge": Command("", old=("track",)),
                            "apply": Command("", old=("cut",))}),
    "occlusion": Command("filter occluded faces (masks, sunglasses, hands) out of an export "
                         "(undoable)", QUEUES,
                         words=("stage", "score", "merge", "report", "apply", "export-onnx")),
    "audit-multiface": Command("drop exported face PNGs that do not show exactly one face "
                               "(undoable)", QUEUES, words=("stage", "apply")),
}


def entry(name: str) -> Command:
    """COMMANDS[name] as a Command (a plain (help, group) pair is a flat command)."""
    value = COMMANDS[name]
    return value if isinstance(value, Command) else Command(*value)


def is_group(command: Command) -> bool:
    """A group of commands each with its own module (faceset, library), as opposed to a
    queue kind whose one module registers its verbs."""
    return bool(command.verbs) and not command.words


def old_names() -> dict[str, list[str]]:
    """Every hidden top-level alias -> the words it stands for (`drop-faces` ->
    [faceset, drop])."""
    return {old: [name, verb] for name in COMMANDS if is_group(entry(name))
            for verb, command in entry(name).verbs.items() for old in command.old}


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


def command_module(name: str, command: Command | None = None) -> str:
    return f"facesets.commands.{(command and command.module) or name.replace('-', '_')}"


NAME_COLUMN = 28   # the width of the top-level help's name column, at most


def _command_list() -> str:
    """The grouped command list of the top-level help (no alias: they are hidden)."""
    lines, group = ["commands (COMMAND --help for each):"], None
    rows = []
    for name in COMMANDS:
        command = entry(name)
        if is_group(command):
            rows += [(f"{name} {verb}", sub.help, command.group)
                     for verb, sub in command.verbs.items()]
        elif command.words:
            rows.append((f"{name} {'|'.join(command.words)}", command.help, command.group))
        else:
            rows.append((name, command.help, command.group))
    # a queue kind's long verb list goes on a line of its own
    width = max(len(name) for name, _, _ in rows if len(name) < NAME_COLUMN) + 2
    for name, text, in_group in rows:
        if in_group != group:
            group = in_group
            lines.append(f"\n  {group}")
        lines.append(f"    {name:<{width}}{text}" if len(name) < width
                     else f"    {name}\n    {'':<{width}}{text}")
    lines.append("\nThe older names still work, as hidden aliases: drop-faces, move-face, "
                 "import-folders,\ndedup-optimize, eras CACHE FACESET --into SWAP_READY, "
                 "video track...")
    return "\n".join(lines)


def _group_list(name: str) -> str:
    command = entry(name)
    width = max(map(len, command.verbs)) + 2
    return "verbs (VERB --help for each):\n" + "\n".join(
        f"  {verb:<{width}}{sub.help}" for verb, sub in command.verbs.items())


class _Named:
    """The subparsers a command module registers into, under the name the table gives it
    (a module says `add_parser("drop-faces")`; the group lists it as `drop`)."""

    def __init__(self, sub, name: str):
        self.sub, self.name = sub, name

    def add_parser(self, _name, **kw):
        return self.sub.add_parser(self.name, **kw)


def _rename_verbs(parser: argparse.ArgumentParser, command: Command) -> None:
    """A queue kind's verbs under the table's names (video `track` -> `merge`): the module
    registers its own; the old verb stays an alias through canonical_argv."""
    renames = {sub.old[0]: verb for verb, sub in (command.verbs or {}).items()}
    if not renames:
        return
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    items = [(renames.get(k, k), v) for k, v in action._name_parser_map.items()]
    action._name_parser_map.clear()
    action._name_parser_map.update(items)
    for new in renames.values():
        sub = action._name_parser_map[new]
        sub.prog = f"{sub.prog.rsplit(' ', 1)[0]} {new}"
    for choice in action._choices_actions:
        choice.dest = choice.metavar = renames.get(choice.dest, choice.dest)


def _add(sub, name: str, command: Command, full: bool) -> None:
    """Add the parser of the command ``name`` to ``sub``: its module's when ``full`` (the
    command that runs), else a stub that only names it, so that its module is not
    imported."""
    if not full:
        sub.add_parser(name, add_help=False)
        return
    importlib.import_module(command_module(name, command)).register(_Named(sub, name))
    if command.words:
        _rename_verbs(sub._name_parser_map[name], command)


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser, with the full parsers of ``commands`` (None: all of them; a command is
    its words, e.g. "faceset rename" or "embed"); every other command is a stub that only
    names it, so that its module is not imported."""
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Sort a photo library by person and build face sets for face-swap tools.",
        epilog=_command_list())
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # the commands are listed by the epilog, by group: their parsers are added without help
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="the command to run (listed below)")
    sub.required = True
    chosen = [c.split() for c in commands if c] if commands is not None else None
    for name in COMMANDS:
        command = entry(name)
        if chosen is None:   # every command, every verb
            paths = [[name, verb] for verb in command.verbs] if is_group(command) \
                else [[name]]
        else:
            paths = [p for p in chosen if p and p[0] == name]
        if is_group(command) and paths:
            _add_group(sub, name, command, {p[1] for p in paths if len(p) > 1})
        else:
            _add(sub, name, command, bool(paths))
    use_help_formatter(parser)   # every default shown, descriptions as written
    return parser


def _add_group(sub, name: str, command: Command, verbs: set[str]) -> None:
    """A group's parser: the full parsers of ``verbs``, stubs for the others."""
    p = sub.add_parser(name, description=f"{command.help}.", epilog=_group_list(name))
    action = p.add_subparsers(dest=f"{name}_verb", metavar="VERB",
                              help="the command to run (listed below)")
    action.required = True
    for verb, leaf in command.verbs.items():
        _add(action, verb, leaf, verb in verbs)


def deprecated(line: str) -> None:
    """One line on stderr for an old spelling that still works."""
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _words(argv: list[str]) -> list[int]:
    """Indexes of the words of ``argv`` that are not options (a top level and a group take
    only options without values, so the first two such words name the command)."""
    return [i for i, w in enumerate(argv) if not w.startswith("-")]


def canonical_argv(argv: list[str]) -> list[str]:
    """``argv`` in today's spelling: old command names (`drop-faces` -> `faceset drop`),
    old verbs (`video track` -> `video merge`), a bare `eras CACHE FACESET` (-> `eras build`)
    and the old `--into SWAP_READY` of import, discover and eras (-> the first positional,
    with a deprecation line). The one place where an alias becomes its command."""
    argv = list(argv)
    at = _words(argv)
    if not at:
        return argv
    i, aliases = at[0], old_names()
    if argv[i] in aliases:
        argv[i:i + 1] = aliases[argv[i]]
    name = argv[i]
    if name not in COMMANDS:
        return argv
    command, end = entry(name), i + 1
    if is_group(command):
        at = [j for j in _words(argv) if j > i]
        if not at or argv[at[0]] not in command.verbs:
            return argv
        command, end = command.verbs[argv[at[0]]], at[0] + 1
    elif command.verbs:   # a queue kind's old verb
        renames = {old: verb for verb, sub in command.verbs.items() for old in sub.old}
        at = [j for j in _words(argv) if j > i]
        if at and argv[at[0]] in renames:
            argv[at[0]] = renames[argv[at[0]]]
    if command.default:   # eras: the verb is the first word after it; a bare one is build
        rest = [j for j in _words(argv) if j >= end]
        verb = next((argv[j] for j in rest if argv[j] in command.words), None)
        if verb is not None:
            argv.pop(argv.index(verb, end))
        elif rest:   # (no word at all: `eras --help` lists the verbs)
            verb = command.default
        if verb is not None:
            argv.insert(end, verb)
            end += 1
    if command.library_first:
        argv = _library_first(argv, end)
    return argv


def _library_first(argv: list[str], end: int) -> list[str]:
    """The old `--into SWAP_READY` (or `--into=SWAP_READY`) of a command whose library is now
    its first positional: moved to ``end`` (after the command's words)."""
    for j in range(end, len(argv)):
        word = argv[j]
        if word == "--":
            break
        if word == "--into" and j + 1 < len(argv):
            folder = argv[j + 1]
            del argv[j:j + 2]
        elif word.startswith("--into="):
            folder = word.split("=", 1)[1]
            del argv[j]
        else:
            continue
        deprecated("--into SWAP_READY is deprecated: give the library folder first, e.g. "
                   f"`{' '.join(argv[:end])} SWAP_READY ...`")
        argv.insert(end, folder)
        return argv
    return argv


def chosen_command(argv: list[str]) -> str | None:
    """The command a canonical ``argv`` runs: its first word, and for a group its verb too
    ("faceset rename")."""
    words = [argv[i] for i in _words(argv)]
    if not words:
        return None
    if words[0] in COMMANDS and is_group(entry(words[0])) and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as main does: aliases first, then only the chosen command's parser."""
    argv = canonical_argv(argv)
    return build_parser({chosen_command(argv)}).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
