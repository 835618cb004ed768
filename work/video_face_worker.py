"""Video face worker: sample each queued shot, detect and embed every face into OUT.

    python work/video_face_worker.py STATE/queue.json STATE/faces [--providers ...]
        [--flush-every N] [--workers N]

The queue comes from `sort_faces.py video stage STATE`. OUT receives frames.jsonl (one JSON
record per shot, appended and flushed every --flush-every shots), model.json and
failures.jsonl; re-run the same command after a crash or kill to resume at the first shot
not recorded.
Then: `sort_faces.py video merge STATE`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facesets.formats.queue import KIND_VIDEO  # noqa: E402
from facesets.runtime.worker import main  # noqa: E402
from facesets.steps.video import make_video_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, KIND_VIDEO, make_video_job,
                  results_help="results folder (frames.jsonl, model.json, failures.jsonl)",
                  description=__doc__))
