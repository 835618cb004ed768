#!/usr/bin/env bash
# run_embed_chain.sh SRC CACHE [--cluster OUT] [--refine OUT] [-- EMBED_OPTIONS...]
#
# Embeds SRC into CACHE through the GPU worker, then clusters/refines when asked:
#   stage   sort_faces.py embed SRC CACHE --stage-queue QUEUE   (WSL: list + hash)
#   worker  work/embed_worker.py QUEUE RESULTS                   (Windows Python, GPU)
#   merge   sort_faces.py embed CACHE --merge-results RESULTS    (WSL)
#   cluster sort_faces.py cluster CACHE OUT $CLUSTER_OPTS        (with --cluster OUT)
#   refine  sort_faces.py refine CACHE OUT $REFINE_OPTS          (with --refine OUT)
# EMBED_OPTIONS (after --) go to the stage step (--model, --model-root, --det-size ...).
#
# Every step logs to work/logs/<step>-<date>.log ($CHAIN_LOG_DIR overrides). Finished steps are
# recorded in the run's state folder (work/queues/chain-<id>/, $CHAIN_STATE_DIR overrides):
# re-running the same command after a crash resumes at the first unfinished step (the worker
# itself resumes mid-queue). Once every step is done, the next run starts a fresh one.
#
# Worker Python: $WIN_PYTHON (e.g. /mnt/c/face_embed_venv/Scripts/python.exe) under WSL; when
# not under WSL the worker runs with the local Python ($PYTHON, default python3).
# $WORKER_OPTS are added to the worker's command line (e.g. "--providers DmlExecutionProvider").
set -euo pipefail

usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "error: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || usage
SRC=$1 CACHE=$2
shift 2
CLUSTER_OUT="" REFINE_OUT=""
EMBED_OPTS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --cluster) [[ $# -ge 2 ]] || usage; CLUSTER_OUT=$2; shift 2 ;;
    --refine) [[ $# -ge 2 ]] || usage; REFINE_OUT=$2; shift 2 ;;
    --) shift; EMBED_OPTS=("$@"); break ;;
    *) usage ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
[[ -d $SRC ]] || die "$SRC: no such folder; pass the folder of photos to embed"
SRC=$(cd "$SRC" && pwd)
mkdir -p "$(dirname "$CACHE")"
CACHE=$(cd "$(dirname "$CACHE")" && pwd)/$(basename "$CACHE")

RUN_ID=$(printf '%s\n%s\n' "$SRC" "$CACHE" | sha256sum | cut -c1-12)
STATE=${CHAIN_STATE_DIR:-$ROOT/work/queues/chain-$RUN_ID}
LOGS=${CHAIN_LOG_DIR:-$ROOT/work/logs}
QUEUE=$STATE/queue.json
RESULTS=$STATE/results
DONE=$STATE/steps.done
mkdir -p "$STATE" "$LOGS"

under_wsl() { [[ -n ${WSL_DISTRO_NAME:-} ]] || grep -qi microsoft /proc/version 2>/dev/null; }

if under_wsl; then
  WORKER_PY=${WIN_PYTHON:-/mnt/c/face_embed_venv/Scripts/python.exe}
  [[ -x $WORKER_PY ]] || die "no Windows Python at $WORKER_PY; set WIN_PYTHON to the venv's python.exe"
  winpath() { wslpath -w "$1"; }
else
  WORKER_PY=${WIN_PYTHON:-$PYTHON}
  winpath() { printf '%s' "$1"; }
fi

# a finished run leaves "complete": the next invocation is a new (incremental) run
if [[ -f $DONE ]] && grep -qx complete "$DONE"; then
  rm -rf "$QUEUE" "$RESULTS" "$DONE"
fi
touch "$DONE"

step_done() { grep -qx "$1" "$DONE"; }

run_step() {  # run_step NAME CMD...: run CMD once per run, logging to LOGS/NAME-DATE.log
  local name=$1; shift
  if step_done "$name"; then
    echo "== $name: already done in this run, skipped"
    return 0
  fi
  local log
  log=$LOGS/$name-$(date +%Y%m%d-%H%M%S).log
  echo "== $name: $*  (log $log)"
  { echo "# $(date -Iseconds) $*"; } >>"$log"
  if ! "$@" 2>&1 | tee -a "$log"; then
    echo "error: step $name failed (log $log); fix it and re-run the same command to resume" >&2
    exit 1
  fi
  echo "$name" >>"$DONE"
}

cd "$ROOT"
run_step stage "$PYTHON" sort_faces.py embed "$SRC" "$CACHE" --stage-queue "$QUEUE" \
  --no-progress "${EMBED_OPTS[@]}"
# shellcheck disable=SC2086  # WORKER_OPTS is a list of words on purpose
run_step worker "$WORKER_PY" "$(winpath "$ROOT/work/embed_worker.py")" "$(winpath "$QUEUE")" \
  "$(winpath "$RESULTS")" ${WORKER_OPTS:-}
if [[ -d $RESULTS/results.npz.segments ]] && compgen -G "$RESULTS/results.npz.segments/seg-*.npz" >/dev/null; then
  run_step merge "$PYTHON" sort_faces.py embed "$CACHE" --merge-results "$RESULTS"
else
  echo "== merge: the worker produced no results (nothing new to embed), skipped"
  echo merge >>"$DONE"
fi
# shellcheck disable=SC2086
[[ -z $CLUSTER_OUT ]] || run_step cluster "$PYTHON" sort_faces.py cluster "$CACHE" "$CLUSTER_OUT" ${CLUSTER_OPTS:-}
# shellcheck disable=SC2086
[[ -z $REFINE_OUT ]] || run_step refine "$PYTHON" sort_faces.py refine "$CACHE" "$REFINE_OUT" ${REFINE_OPTS:-}
echo complete >>"$DONE"
echo "chain: done (state $STATE, logs $LOGS)"
