"""occlusion: take masked, sunglassed and hand-covered faces out of a swap-ready export.

  occlusion stage SWAP_READY QUEUE         queue every face PNG of the export
  occlusion score QUEUE RESULTS            score in-process (--scorer clip | onnx:PATH); or
                                           on the GPU side: work/clip_worker.py QUEUE RESULTS
  occlusion merge RESULTS... SCORES        worker results into one scores file per export
  occlusion report SCORES REPORT_DIR       static HTML contact sheet per faceset
  occlusion apply SCORES [--dry-run]       prune / quarantine (undoable: `library undo SWAP_READY`)
  occlusion export-onnx OUT.onnx           CLIP image tower + prompt embeddings + logit scale
                                           as one ONNX graph for the torch-free worker
Rules: a face with any attribute >= --image-threshold (0.7) is flagged; a faceset with
>= --faceset-share (40%) flagged moves to _masked/; else its flagged PNGs go to
faces/_dropped/, and a faceset left with fewer than --min-survivors (5) after pruning moves
to _thin/.
"""
from __future__ import annotations

import argparse

from .common import say

# export-onnx --check: the largest score difference from torch (fp32) an export may show
FP32_TOLERANCE = 1e-3
FP16_TOLERANCE = 2e-2


def _rules(p) -> None:
    from ..steps.occlusion import OcclusionRules
    from .common import defaults

    d = defaults(OcclusionRules)
    p.add_argument("--image-threshold", type=float, default=d["image_threshold"],
                   help="flag a face whose probability for any attribute reaches this")
    p.add_argument("--faceset-share", type=float, default=d["faceset_share"],
                   help="quarantine a faceset to _masked/ when this share of it is flagged")
    p.add_argument("--min-survivors", type=int, default=d["min_survivors"],
                   help="a faceset left with fewer faces after pruning moves to _thin/")


def _rules_of(args):
    from ..steps.occlusion import OcclusionRules

    return OcclusionRules(args.image_threshold, args.faceset_share, args.min_survivors)


def clip_options(p) -> None:
    """The clip scorer's options, defaults from steps.occlusion.ClipOptions."""
    from ..steps.occlusion import ClipOptions
    from .common import defaults

    d = defaults(ClipOptions)
    p.add_argument("--clip-model", default=d["clip_model"],
                   help="open_clip architecture of the clip scorer")
    p.add_argument("--pretrained", default=d["pretrained"],
                   help="open_clip pretrained tag (weights from the Hugging Face hub, cached); "
                        "'none': random weights")
    p.add_argument("--weights", default=d["weights"],
                   help="local checkpoint file instead of --pretrained (no download)")
    p.add_argument("--model-config", default=d["model_config"],
                   help="open_clip model config JSON to register first (its file stem is "
                        "the architecture's name)")
    p.add_argument("--prompts", default=d["prompts"],
                   help="prompt ensembles JSON (default: facesets/scorers/"
                        "occlusion_prompts.json; copy and edit it)")
    p.add_argument("--threads", type=int, default=d["threads"], help="torch CPU threads")
    p.add_argument("--device", default=d["device"],
                   help="torch device of the clip scorer (cpu, cuda); the GPU path without "
                        "torch is export-onnx + --scorer onnx:PATH")


def scorer_options(p) -> None:
    """``--scorer`` and the clip scorer's options: `occlusion score` and work/clip_worker.py
    (beside runtime.worker's options)."""
    from ..steps.occlusion import OcclusionWorkerParams
    from .common import defaults

    p.add_argument("--scorer", default=defaults(OcclusionWorkerParams)["scorer"],
                   help="clip (open_clip zero-shot, torch) or onnx:PATH (ONNX Runtime: a "
                        "binary occlusion classifier [clean, occluded], or a CLIP graph "
                        "written by `occlusion export-onnx`)")
    clip_options(p)
    p.add_argument("--fp16", action="store_true",
                   help="clip scorer on a GPU (--device cuda): run under fp16 autocast "
                        "(several times faster on a recent NVIDIA GPU; scores differ from "
                        "fp32 by rounding: docs/benchmarks.md)")


def worker_params(args):
    """steps.occlusion.OcclusionWorkerParams from the parsed worker and scorer options."""
    from ..runtime.worker import params_from
    from ..steps.occlusion import ClipOptions, OcclusionWorkerParams

    return params_from(args, OcclusionWorkerParams, clip=params_from(args, ClipOptions))


def register(sub) -> None:
    from ..runtime.worker import worker_options
    from ..steps.occlusion import OcclusionWorkerParams

    p = sub.add_parser("occlusion", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ops = p.add_subparsers(dest="op", metavar="OP")
    ops.required = True

    s = ops.add_parser("stage", help="queue every face PNG of an export-swap output")
    s.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    s.add_argument("queue", metavar="QUEUE", help="queue JSON to write")
    s.set_defaults(func=_stage)

    s = ops.add_parser("score", help="score a queue in-process (the worker's job loop)")
    worker_options(s, OcclusionWorkerParams, "results file (JSON Lines, appended; resumable)")
    scorer_options(s)
    s.set_defaults(func=_score)

    s = ops.add_parser("merge", help="worker results into one scores file")
    s.add_argument("results", metavar="RESULTS", nargs="+",
                   help="one or more results files of one export (e.g. CLIP and a classifier)")
    s.add_argument("scores", metavar="SCORES", help="scores file to write (JSON)")
    s.set_defaults(func=_merge)

    s = ops.add_parser("report", help="static HTML contact sheet per faceset")
    s.add_argument("scores", metavar="SCORES", help="scores file of `occlusion merge`")
    s.add_argument("report_dir", metavar="REPORT_DIR",
                   help="folder for index.html, one page per faceset and the thumbnails")
    _rules(s)
    s.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    s.set_defaults(func=_report)

    s = ops.add_parser("apply", help="prune flagged faces, quarantine masked and thin facesets")
    s.add_argument("scores", metavar="SCORES", help="scores file (it names its export)")
    _rules(s)
    s.add_argument("--dry-run", action="store_true",
                   help="write the plan (SCORES.plan.json) and print it; change nothing")
    s.set_defaults(func=_apply)

    s = ops.add_parser("export-onnx", help="CLIP zero-shot as one ONNX graph (no torch "
                                           "needed to run it)")
    s.add_argument("out", metavar="OUT.onnx", help="ONNX file to write")
    clip_options(s)
    s.add_argument("--fp16", action="store_true",
                   help="write the graph in float16 (about half the size; float32 input and "
                        f"output; --check tolerance {FP16_TOLERANCE:g})")
    s.add_argument("--check", type=int, default=8,
                   help="score N synthetic crops with torch and ONNX Runtime and compare "
                        "(0: skip)")
    s.set_defaults(func=_export_onnx)


def _scorer_errors(fn):
    def run(args) -> int:
        from ..scorers import ScorerError

        try:
            return fn(args)
        except ScorerError as exc:
            raise ValueError(str(exc)) from None
    return run


def _stage(args) -> int:
    from ..steps.occlusion import stage_occlusion_queue

    n = stage_occlusion_queue(args.swap_ready, args.queue)
    say(f"occlusion stage: {n} face PNGs queued in {args.queue}; next: occlusion score "
        f"{args.queue} RESULTS (or work/clip_worker.py {args.queue} RESULTS on the GPU side)")
    return 0


@_scorer_errors
def _score(args) -> int:
    from pathlib import Path

    from ..formats.queue import KIND_OCCLUSION, load_queue
    from ..runtime.jobs import EXIT_INTERRUPTED
    from ..runtime.pathmap import PathMapper
    from ..runtime.worker import run_job, settle_options, work_items, worker_lock
    from ..steps.occlusion import OcclusionWorkerParams, make_occlusion_job

    settle_options(args, OcclusionWorkerParams)
    params = worker_params(args)
    queue = load_queue(args.queue, KIND_OCCLUSION)
    mapper = PathMapper(None, args.path_map, windows=False)
    job, lock, failures = make_occlusion_job(queue, params, mapper)
    with worker_lock(lock, what=f"results {args.results}"):
        summary = run_job(job, work_items(queue, mapper), Path(failures), params.flush_every,
                          args.progress)
    say(summary.line() + (f" (see {failures})" if summary.failed else ""))
    return EXIT_INTERRUPTED if summary.interrupted else 0


def _merge(args) -> int:
    from ..steps.occlusion import merge_results

    doc = merge_results(args.results, args.scores)
    n = sum(len(v) for v in doc["facesets"].values())
    say(f"occlusion merge: {n} faces scored in {len(doc['facesets'])} facesets "
        f"({', '.join(doc['attributes'])}; scorers {', '.join(doc['scorers'])}), "
        f"{len(doc['unscored'])} not scored yet, {len(doc['errors'])} unreadable -> "
        f"{args.scores}")
    return 0


def _report(args) -> int:
    from ..steps.occlusion import plan_filter, write_report

    plan = plan_filter(args.scores, _rules_of(args))
    index = write_report(plan, args.report_dir, args.progress)
    say(f"occlusion report: {plan.line()}; open {index}")
    return 0


def _apply(args) -> int:
    from pathlib import Path

    from ..formats.occlusion import load_scores, plan_path
    from ..steps.occlusion import apply_filter, plan_filter, write_plan
    from .common import recorded_run

    def plan():
        p = plan_filter(args.scores, _rules_of(args))
        write_plan(p, dry_run=args.dry_run)
        return p

    root = Path(load_scores(args.scores)["export"])
    recorded_run(root, "occlusion apply", plan, apply_filter, args.dry_run)
    say(f"  plan: {plan_path(args.scores)}")
    return 0


@_scorer_errors
def _export_onnx(args) -> int:
    from ..runtime.worker import params_from
    from ..scorers import scorer_from_spec
    from ..steps.occlusion import ClipOptions, check_images, compare_scorers

    # --fp16 here is the graph's dtype; the check's reference is torch in float32
    options = params_from(args, ClipOptions, fp16=False)
    clip = scorer_from_spec("clip", options.scorer_options())
    meta = clip.export_onnx(args.out, fp16=args.fp16)
    say(f"occlusion export-onnx: {meta['name']} -> {args.out} (attributes "
        f"{', '.join(meta['attributes'])}, input {meta['image_size']} px, logit scale "
        f"{meta['logit_scale']:.4f})")
    if args.check > 0:
        onnx = scorer_from_spec(f"onnx:{args.out}")
        r = compare_scorers(clip, onnx, check_images(args.check))
        say(f"  check on {r['images']} synthetic crops: max abs score difference "
            f"{r['max_abs_diff']:.2e}; torch {r['a_img_s']:.1f} img/s, ONNX Runtime "
            f"{r['b_img_s']:.1f} img/s")
        tolerance = FP16_TOLERANCE if args.fp16 else FP32_TOLERANCE
        if r["max_abs_diff"] >= tolerance:
            raise ValueError(f"{args.out}: ONNX scores differ from torch by "
                             f"{r['max_abs_diff']:.2e} (>= {tolerance:g}); do not use this "
                             "export")
    return 0
