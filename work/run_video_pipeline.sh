#!/usr/bin/env bash
# run_video_pipeline.sh VIDEO_DIR OUT_DIR [-- OPTIONS...]
#
# Video targets from every video under VIDEO_DIR: clips under OUT_DIR/<source>/ and
# OUT_DIR/plan.json. Steps (sort_faces.py video ..., docs/video-format.md):
#   scenes  video scenes VIDEO_DIR STATE          shot boundaries (PySceneDetect)
#   stage   video stage STATE                     one queue item per shot
#   worker  work/video_face_worker.py QUEUE FACES sample, detect, embed (resumable)
#   track   video merge STATE                     tracks + segments passing the gates
#   cut     video apply STATE OUT_DIR             ffmpeg clips + plan.json
# STATE is OUT_DIR/.video_state ($VIDEO_STATE_DIR overrides); every step logs to
# STATE/logs/<step>.log. Finished steps are recorded in STATE/steps.done: re-running the same
# command after a crash resumes at the first unfinished step (the worker itself resumes
# mid-queue). Once every step is done, the next run starts over (each step skips what it has).
# OPTIONS go to the step that takes them: --detector (scenes); --fps, --model, --model-root,
# --det-size (stage); --providers (stage + worker); --track-threshold (old: --threshold), --gap, --max-yaw,
# --min-face-short, --min-det-score, --min-pass, --min-len, --max-len, --faceset,
# --faceset-threshold (track); --reencode (cut). SIDECAR=yes adds --write-sidecar to cut.
# $PYTHON (default python3) runs every step; `work/status_video_pipeline.sh OUT_DIR` shows
# where a run stands.
set -euo pipefail

usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "error: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || usage
VIDEO_DIR=$1 OUT=$2
shift 2
if [[ $# -gt 0 ]]; then
  [[ $1 == -- ]] || usage
  shift
fi
SCENES_OPTS=() STAGE_OPTS=() WORKER_OPTS_A=() TRACK_OPTS=() CUT_OPTS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --reencode) CUT_OPTS+=("$1"); shift ;;
    --detector) [[ $# -ge 2 ]] || usage; SCENES_OPTS+=("$1" "$2"); shift 2 ;;
    --fps|--model|--model-root|--det-size) [[ $# -ge 2 ]] || usage; STAGE_OPTS+=("$1" "$2"); shift 2 ;;
    --providers) [[ $# -ge 2 ]] || usage; STAGE_OPTS+=("$1" "$2"); WORKER_OPTS_A+=("$1" "$2"); shift 2 ;;
    --track-threshold|--threshold|--gap|--max-yaw|--min-face-short|--min-det-score|--min-pass|--min-len|--max-len|--faceset|--faceset-threshold)
      [[ $# -ge 2 ]] || usage; TRACK_OPTS+=("$1" "$2"); shift 2 ;;
    *) die "unknown option $1 (see the head of $0)" ;;
  esac
done
[[ ${SIDECAR:-no} == yes ]] && CUT_OPTS+=(--write-sidecar)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
[[ -e $VIDEO_DIR ]] || die "$VIDEO_DIR: no such folder of videos"
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null \
  || die "ffmpeg not found: install FFmpeg (Debian/Ubuntu: sudo apt-get install -y ffmpeg)"
VIDEO_DIR=$(cd "$(dirname "$VIDEO_DIR")" && pwd)/$(basename "$VIDEO_DIR")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATE=${VIDEO_STATE_DIR:-$OUT/.video_state}
LOGS=$STATE/logs
DONE=$STATE/steps.done
mkdir -p "$STATE" "$LOGS"

if [[ -f $DONE ]] && grep -qx complete "$DONE"; then
  rm -f "$DONE"   # a finished run: start over (each step skips what it already has)
fi
touch "$DONE"

run_step() {  # run_step NAME CMD...: once per run, logging to LOGS/NAME.log
  local name=$1; shift
  if grep -qx "$name" "$DONE"; then
    echo "== $name: already done in this run, skipped"
    return 0
  fi
  local log=$LOGS/$name.log
  echo "== $name: $*  (log $log)"
  echo "# $(date -Iseconds) $*" >>"$log"
  if ! "$@" 2>&1 | tee -a "$log"; then
    echo "error: step $name failed (log $log); fix it and re-run the same command to resume" >&2
    exit 1
  fi
  echo "$name" >>"$DONE"
}

cd "$ROOT"
run_step scenes "$PYTHON" sort_faces.py video scenes "$VIDEO_DIR" "$STATE" --no-progress "${SCENES_OPTS[@]}"
run_step stage "$PYTHON" sort_faces.py video stage "$STATE" "${STAGE_OPTS[@]}"
run_step worker "$PYTHON" work/video_face_worker.py "$STATE/queue.json" "$STATE/faces" \
  --no-progress "${WORKER_OPTS_A[@]}"
run_step track "$PYTHON" sort_faces.py video merge "$STATE" "${TRACK_OPTS[@]}"
run_step cut "$PYTHON" sort_faces.py video apply "$STATE" "$OUT" --no-progress "${CUT_OPTS[@]}"
echo complete >>"$DONE"
echo "video pipeline: done: clips under $OUT/<source>/, plan $OUT/plan.json (state $STATE)"
