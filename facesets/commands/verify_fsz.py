"""verify-fsz PATH...: check .fsz bundles as roop-unleashed reads them (one face per PNG)."""
from __future__ import annotations

import os

from ..backends import BackendError
from ..formats.bundle import BundleError, read_fsz
from ..io.imageio import DEFAULT_MAX_PIXELS
from ..runtime.progress import progress_bar
from ..steps.verify import (bundle_model, find_bundles, listing_problems, png_digest,
                            verify_bundle)
from .common import add_cache_model_options, add_progress_option, cache_model, load_for, say

EXIT_FAILED = 1


def register(sub) -> None:
    p = sub.add_parser("verify-fsz", description=__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help=".fsz files, or folders searched for them")
    add_cache_model_options(p, "the faceset (its manifest beside the bundle)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger PNG members are reported as bad without decoding "
                        "(decompression bombs)")
    add_progress_option(p)
    p.set_defaults(func=run)


def report_lines(path, r) -> list[str]:
    """What verify-fsz says about one checked bundle."""
    counts = [c for _, c in r.faces_per_png]
    sim = (f"similarity to centroid {r.similarity:.3f}" if r.similarity is not None
           else f"similarity n/a ({r.centroid_note})")
    hist = ", ".join(f"{k} face{'s' if k != 1 else ''}: {counts.count(k)}"
                     for k in sorted(set(counts))) or "no PNG"
    lines = [f"{'ok' if r.ok else 'FAIL'} {path}: {r.png_count} PNGs ({hist}); {sim}"]
    lines += [f"  {path}: member {name}: {why}" for name, why in r.undecodable]
    unreadable = {name for name, _ in r.undecodable}
    faces_wrong = [(n, c) for n, c in r.bad if n not in unreadable]
    if faces_wrong:
        lines.append("  " + ", ".join(f"{n}: {c} faces" for n, c in faces_wrong))
    if r.skipped:
        lines.append(f"  ignored non-PNG members: {', '.join(r.skipped)}")
    return lines


class Backends:
    """One backend per model pack the bundles need (by default each faceset's own pack)."""

    def __init__(self, args):
        self.args, self.loaded, self.caches = args, {}, {}

    def for_bundle(self, path):
        meta, where = ({}, "") if self.args.model else bundle_model(path, self.caches)
        model, root, _ = cache_model(self.args, meta, where)
        if (model, root) not in self.loaded:
            try:
                self.loaded[model, root] = load_for(self.args, meta, where)
            except BackendError as exc:
                if self.args.model:   # the pack asked for is missing: no bundle can pass
                    raise
                self.loaded[model, root] = exc   # this faceset's pack: its bundles fail
        return self.loaded[model, root]


def run(args) -> int:
    bundles = find_bundles(args.paths)
    backends = Backends(args)
    failed = 0
    checked: dict[str, tuple[str, bool]] = {}   # PNG digest -> (first bundle, ok)
    for path in progress_bar(bundles, desc="verify-fsz", unit="bundle",
                             disable=not args.progress or len(bundles) < 2):
        try:   # a bad bundle fails alone; the others are still checked
            contents = read_fsz(path)
            digest = png_digest(contents)
            if digest in checked and contents.pngs:
                first, ok = checked[digest]
                say(f"{'ok' if ok else 'FAIL'} {path}: the same {len(contents.pngs)} PNGs as "
                    f"{first}, checked once")
                failed += not ok
                continue
            backend = backends.for_bundle(path)
            if isinstance(backend, BackendError):
                raise backend
            r = verify_bundle(path, backend, args.max_pixels, contents)
        except BackendError as exc:
            if args.model:
                raise
            say(f"FAIL {path}: {exc}")
            failed += 1
            continue
        except (BundleError, OSError, ValueError) as exc:
            why = str(exc)   # the bundle's own errors start with its path: not twice
            say(f"FAIL {why}" if why.startswith(f"{path}: ") else f"FAIL {path}: {why}")
            failed += 1
            continue
        checked[digest] = (str(path), r.ok)
        for line in report_lines(path, r):
            say(line)
        failed += not r.ok
    # a library's top-level manifest must name the bundles that are on disk
    wrong = [line for p in args.paths if os.path.isdir(p) for line in listing_problems(p)]
    for line in wrong:
        say(f"FAIL {line}")
    say(f"verify-fsz: {len(bundles) - failed} of {len(bundles)} bundles pass"
        + (f"; {len(wrong)} listing problem{'s' if len(wrong) != 1 else ''}" if wrong else ""))
    return EXIT_FAILED if failed or wrong else 0
