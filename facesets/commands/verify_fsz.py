"""verify-fsz PATH...: check .fsz bundles as roop-unleashed reads them (one face per PNG)."""
from __future__ import annotations

from tqdm import tqdm

from ..io.imageio import DEFAULT_MAX_PIXELS
from ..steps.verify import find_bundles, verify_bundle
from .common import add_model_options, add_progress_option, say

EXIT_FAILED = 1


def register(sub) -> None:
    p = sub.add_parser("verify-fsz", help="check that every PNG of a bundle has one face",
                       description=__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help=".fsz files, or folders searched for them")
    add_model_options(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger PNG members are reported as bad without decoding "
                        "(decompression bombs)")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backends import load_backend

    bundles = find_bundles(args.paths)
    backend = load_backend(args.model, args.model_root, args.providers, args.det_size)
    failed = 0
    for path in tqdm(bundles, desc="verify-fsz", unit="bundle",
                     disable=not args.progress or len(bundles) < 2):
        r = verify_bundle(path, backend, args.max_pixels)
        counts = [c for _, c in r.faces_per_png]
        sim = (f"similarity to centroid {r.similarity:.3f}" if r.similarity is not None
               else f"similarity n/a ({r.centroid_note})")
        hist = ", ".join(f"{k} face{'s' if k != 1 else ''}: {counts.count(k)}"
                         for k in sorted(set(counts))) or "no PNG"
        status = "ok" if r.ok else "FAIL"
        say(f"{status} {path}: {r.png_count} PNGs ({hist}); {sim}")
        for name, why in r.undecodable:
            say(f"  {path}: member {name}: {why}")
        unreadable = {name for name, _ in r.undecodable}
        faces_wrong = [(n, c) for n, c in r.bad if n not in unreadable]
        if faces_wrong:
            say("  " + ", ".join(f"{n}: {c} faces" for n, c in faces_wrong))
        if not r.ok:
            failed += 1
        if r.skipped:
            say(f"  ignored non-PNG members: {', '.join(r.skipped)}")
    say(f"verify-fsz: {len(bundles) - failed} of {len(bundles)} bundles pass")
    return EXIT_FAILED if failed else 0
