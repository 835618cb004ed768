#!/usr/bin/env bash
# finalize_immich.sh LABEL [FINALIZE_OPTIONS...]
#
# The whole Immich import for one staged user label, through the GPU worker:
#   stage     sort_faces.py immich stage --user LABEL ... --queue Q    (WSL: fetch + queue)
#   worker    work/embed_worker.py Q RESULTS                           (Windows Python, GPU)
#   merge     sort_faces.py embed CACHE --merge-results RESULTS        (WSL)
#   match     sort_faces.py extend CACHE OUT/raw --refine-out OUT/facesets
#             (a library fed only from Immich, OUT without `run` output yet:
#              sort_faces.py run ROOT OUT --cache CACHE, with --run-args=...)
#   export    sort_faces.py export-swap CACHE OUT/facesets/refine_manifest.json OUT/swap_ready
#   discover  sort_faces.py library discover OUT/swap_ready CACHE ROOT --dry-run  (a report)
# This is `sort_faces.py immich finalize LABEL --worker-python PY`: every step logs to
# work/logs/immich-LABEL-STEP-DATE.log and the same command resumes at the first unfinished
# step; once all steps are done, the same command starts a new run (re-run it weekly: the
# export and discover use the settings the library recorded, --model the cache's pack).
# IMMICH_URL and IMMICH_API_KEY come from the environment (never the command line).
# Worker Python: $WIN_PYTHON (under WSL default /mnt/c/face_embed_venv/Scripts/python.exe);
# not under WSL and without $WIN_PYTHON, embedding runs in-process.
# FINALIZE_OPTIONS: --cache CACHE, --out OUT, --model/--model-root, --run-args=...,
# --extend-args=..., --export-args=..., --discover-args=... (see `sort_faces.py immich
# finalize --help`).
set -euo pipefail

usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
under_wsl() { [[ -n ${WSL_DISTRO_NAME:-} ]] || grep -qi microsoft /proc/version 2>/dev/null; }

WORKER=()
if under_wsl; then
  WORKER_PY=${WIN_PYTHON:-/mnt/c/face_embed_venv/Scripts/python.exe}
  [[ -x $WORKER_PY ]] || { echo "error: no Windows Python at $WORKER_PY; set WIN_PYTHON to the venv's python.exe" >&2; exit 2; }
  WORKER=(--worker-python "$WORKER_PY")
elif [[ -n ${WIN_PYTHON:-} ]]; then
  WORKER=(--worker-python "$WIN_PYTHON")
fi
exec "$PYTHON" "$ROOT/sort_faces.py" immich finalize "$@" ${WORKER[@]+"${WORKER[@]}"}
