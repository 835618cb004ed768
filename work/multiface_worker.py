"""Multi-face worker: re-detect every face PNG of a multiface queue, one JSONL record each.

    python work/multiface_worker.py QUEUE RESULTS [--providers ...] [--flush-every N]
        [--path-map FROM=TO]

Detection only ({id, path, faces, scores} per PNG, or {id, path, error}). RESULTS is append-
only JSON Lines: re-run the same command after a crash to resume. Items that could not be
opened go to RESULTS' sibling *.failures.jsonl and are retried. Then, on the WSL side:
    python sort_faces.py audit-multiface apply QUEUE RESULTS [--dry-run]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facesets.steps.audit import make_multiface_job  # noqa: E402
from facesets.formats.queue import KIND_MULTIFACE  # noqa: E402
from facesets.runtime.worker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, KIND_MULTIFACE, make_multiface_job,
                  results_help="results file (JSON Lines, appended)", description=__doc__))
