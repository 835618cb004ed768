"""video scenes|stage|merge|apply: short clips of one clearly visible face, for the swap to run on.

  video scenes VIDEO_DIR STATE    shots of every video (PySceneDetect), one file per video
  video stage STATE               queue one item per shot (then the worker, below)
  python work/video_face_worker.py STATE/queue.json STATE/faces
                                  sample each shot at --fps, detect + embed every face
                                  (in-process here, or on a GPU machine; resumable)
  video merge STATE               tracks within shots, segments passing the quality gates
  video apply STATE OUT           ffmpeg: OUT/<source>/<uuid>.mp4 per segment, OUT/plan.json
work/run_video_pipeline.sh VIDEO_DIR OUT chains them (docs/video-format.md).
"""
from __future__ import annotations

from pathlib import Path

from ..steps import video as step
from .common import add_model_options, add_progress_option, defaults, say, warn
from .options import add_old_spelling

TRACK = defaults(step.TrackParams)
STATE_HELP = "state folder of this video batch (scenes, queue, worker results, tracks)"


def register(sub) -> None:
    p = sub.add_parser("video", description=__doc__)
    vsub = p.add_subparsers(dest="video_command", metavar="STEP")
    vsub.required = True

    s = vsub.add_parser("scenes", help="shot boundaries of every video under a folder")
    s.add_argument("video_dir", metavar="VIDEO_DIR", help="folder of videos (or one video)")
    s.add_argument("state", metavar="STATE", help=STATE_HELP)
    s.add_argument("--detector", default=step.DEFAULT_DETECTOR, choices=step.DETECTORS,
                   help="PySceneDetect detector (adaptive: AdaptiveDetector, content: "
                        "ContentDetector)")
    add_progress_option(s)
    s.set_defaults(func=run_scenes)

    s = vsub.add_parser("stage", help="queue every shot for the face worker")
    s.add_argument("state", metavar="STATE", help=STATE_HELP)
    s.add_argument("--fps", type=float, default=step.DEFAULT_FPS,
                   help="frames sampled per second of each shot")
    add_model_options(s)
    s.set_defaults(func=run_stage)

    s = vsub.add_parser("track", help="tracks within shots and the segments passing the gates")
    s.add_argument("state", metavar="STATE", help=STATE_HELP)
    s.add_argument("--track-threshold", type=float, default=None,
                   help="cosine distance within which a face continues a track (default: "
                        "the model's)")
    add_old_spelling(s, "--threshold", "--track-threshold",
                     "--threshold is the clustering distance everywhere else")
    s.add_argument("--gap", type=float, default=TRACK["gap"],
                   help="seconds a track stays open without a detection")
    s.add_argument("--max-yaw", type=float, default=TRACK["max_yaw"],
                   help="|yaw| gate in degrees (not judged with a pack without pose model)")
    s.add_argument("--min-face-short", type=float, default=TRACK["min_face_short"],
                   help="face short edge gate, px")
    s.add_argument("--min-det-score", type=float, default=TRACK["min_det_score"],
                   help="detection score gate")
    s.add_argument("--min-pass", type=float, default=TRACK["min_pass"],
                   help="share of a track's sampled frames that must pass every gate")
    s.add_argument("--min-len", type=float, default=TRACK["min_len"], help="seconds")
    s.add_argument("--max-len", type=float, default=TRACK["max_len"],
                   help="seconds; longer segments are split")
    s.add_argument("--faceset", default=None, metavar="FACESET_DIR",
                   help="keep only tracks of this person: a swap-ready faceset folder "
                        "(export-swap's OUT/faceset_NNN)")
    s.add_argument("--faceset-threshold", type=float, default=None,
                   help="cosine distance from the faceset's centroid (default: the model's)")
    s.set_defaults(func=run_track)

    s = vsub.add_parser("cut", help="cut every segment into a clip with ffmpeg")
    s.add_argument("state", metavar="STATE", help=STATE_HELP)
    s.add_argument("out", metavar="OUT",
                   help="clips go to OUT/<source>/, the plan to OUT/plan.json")
    s.add_argument("--reencode", action="store_true",
                   help="re-encode (H.264) for frame-exact starts; default: stream copy, "
                        "which starts at the keyframe before (the plan says how far)")
    s.add_argument("--write-sidecar", action="store_true",
                   help="also write OUT/<source>/<uuid>.json beside each clip")
    add_progress_option(s)
    s.set_defaults(func=run_cut)


def run_scenes(args) -> int:
    summary = step.scan_scenes(args.video_dir, args.state, args.detector, args.progress)
    for line in summary.skipped:
        warn(f"skipped {line}")
    say(f"video scenes: {summary.line()} -> {args.state}")
    return 0


def run_stage(args) -> int:
    videos, shots = step.stage_video_queue(args.state, args.fps, args.model, args.model_root,
                                           args.det_size)
    say(f"video stage: {shots} shots of {videos} videos queued at {args.fps:g} fps -> "
        f"{args.state}/queue.json; next: python work/video_face_worker.py "
        f"{args.state}/queue.json {args.state}/faces")
    return 0


def run_track(args) -> int:
    from ..core.settings import library_settings, library_threshold
    from ..formats import video as vf
    from ..formats.queue import KIND_VIDEO, load_queue
    from ..io.fsutil import read_json

    queue = load_queue(Path(args.state) / vf.QUEUE_FILE, KIND_VIDEO)
    model_file = Path(args.state) / vf.FACES_DIR / vf.MODEL_FILE
    model = read_json(model_file) if model_file.is_file() else {}
    model = model if isinstance(model, dict) else {}
    meta = {"model": model.get("model")}
    # --faceset names a faceset of a library: its recorded thresholds serve a model without
    # built-in ones (flag > library > model table)
    lib = library_settings(Path(args.faceset).parent if args.faceset else None)
    threshold, source = library_threshold("track", meta, args.track_threshold, lib)
    if source not in ("flag", "model default"):
        say(f"video merge: link distance {threshold} ({source})")
    identity, name, faceset_threshold = None, "", None
    if args.faceset:
        identity, name = step.faceset_identity(args.faceset, model.get("model_id"))
        faceset_threshold = library_threshold("video_faceset", meta, args.faceset_threshold,
                                              lib)[0]
    params = step.TrackParams(
        threshold=threshold,
        fps=float(queue["params"]["fps"]), gap=args.gap, max_yaw=args.max_yaw,
        min_face_short=args.min_face_short, min_det_score=args.min_det_score,
        min_pass=args.min_pass, min_len=args.min_len, max_len=args.max_len,
        faceset_threshold=faceset_threshold)
    doc = step.track_segments(args.state, params, identity, name)
    p = doc["params"]
    secs = sum(s["end"] - s["start"] for s in doc["segments"])
    say(f"video merge: {len(doc['tracks'])} tracks in {p['shots_recorded']} shots, "
        f"{len(doc['segments'])} segments ({secs:.1f} s) pass the gates"
        + (f" and match {name}" if name else "")
        + (f"; {p['shots_missing']} queued shots not scored yet (run the worker)"
           if p["shots_missing"] else "")
        + ("; yaw not judged (the model pack has no pose model)"
           if doc["tracks"] and not any(f["yaw"] is not None for t in doc["tracks"]
                                        for f in t["frames"]) else ""))
    return 0


def run_cut(args) -> int:
    summary = step.cut_clips(args.state, args.out, args.reencode, args.write_sidecar,
                             args.progress)
    for line in summary.failed:
        warn(f"not cut: {line}")
    for line in summary.outside_tolerance:
        warn(f"outside tolerance: {line}")
    say(f"video apply: {summary.line()} -> {args.out}/plan.json")
    return 2 if summary.failed else 0
