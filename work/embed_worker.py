"""Embed worker: analyse an embed queue (detection, landmarks, recognition) into OUT.

    python work/embed_worker.py QUEUE OUT [--providers ...] [--flush-every N] [--path-map FROM=TO]

Run by a GPU-side Python (on Windows: /mnt/c/face_embed_venv/Scripts/python.exe, a venv made
from requirements-worker.txt). OUT receives cache segments (OUT/results.npz.segments/) and
OUT/failures.jsonl; re-run the same command after a crash to resume. Then, on the WSL side:
    python sort_faces.py embed CACHE --merge-results OUT
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facesets.formats.queue import KIND_EMBED  # noqa: E402
from facesets.runtime.worker import main  # noqa: E402
from facesets.steps.embed_queue import EmbedWorkerParams, make_embed_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, KIND_EMBED, make_embed_job,
                  results_help="results folder (cache segments + failures.jsonl)",
                  description=__doc__, params_type=EmbedWorkerParams))
