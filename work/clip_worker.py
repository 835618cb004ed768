"""Occlusion worker: score every face PNG of an occlusion queue, one JSONL record each.

    python work/clip_worker.py QUEUE RESULTS [--scorer clip|onnx:PATH] [--batch-size 8]
                               [--flush-every 50] [--providers ...] [--path-map FROM=TO]

``--scorer onnx:PATH`` needs only onnxruntime, numpy, Pillow and tqdm
(requirements-occlusion-worker.txt): PATH is a graph of `sort_faces.py occlusion export-onnx`
(CLIP image tower + prompt embeddings + logit scale) or a binary occlusion classifier.
``--scorer clip`` runs open_clip on torch (requirements-clip.txt). RESULTS is append-only
JSON Lines ({id, path, sha256, scorer, scores} or {id, path, error}), flushed every
--flush-every images (--batch-size is the scorer's inference batch): re-run the same command
after a crash to resume. A warning is printed when ONNX
Runtime falls back to the CPU. Then, on the WSL side:
    python sort_faces.py occlusion merge RESULTS SCORES
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facesets.commands.occlusion import scorer_options, worker_params  # noqa: E402
from facesets.formats.queue import KIND_OCCLUSION  # noqa: E402
from facesets.runtime.worker import main  # noqa: E402
from facesets.steps.occlusion import OcclusionWorkerParams, make_occlusion_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, KIND_OCCLUSION, make_occlusion_job,
                  results_help="results file (JSON Lines, appended)", description=__doc__,
                  params_type=OcclusionWorkerParams, extra_options=scorer_options,
                  build_params=worker_params))
