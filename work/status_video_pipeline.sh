#!/usr/bin/env bash
# status_video_pipeline.sh OUT_DIR: where a run of run_video_pipeline.sh stands
# (steps done, videos scanned / skipped, shots and frames scored, segments, clips cut).
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
OUT=$1
STATE=${VIDEO_STATE_DIR:-$OUT/.video_state}
[[ -d $STATE ]] || { echo "error: $STATE: no video pipeline state (run work/run_video_pipeline.sh first)" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "${PYTHON:-python3}" - "$STATE" "$OUT" <<'PY'
import json, os, sys
from pathlib import Path
state, out = Path(sys.argv[1]), Path(sys.argv[2])
done = (state / "steps.done").read_text().split() if (state / "steps.done").is_file() else []
steps = ["scenes", "stage", "worker", "track", "cut"]
nxt = next((s for s in steps if s not in done), None)
print(f"steps done: {', '.join(s for s in steps if s in done) or 'none'}"
      + ("; run complete" if "complete" in done else f"; next: {nxt}"))
def load(p):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
scenes = [load(p) for p in sorted((state / "scenes").glob("*.json"))]
scenes = [d for d in scenes if isinstance(d, dict)]
bad = [d for d in scenes if d.get("status") == "error"]
print(f"videos: {len(scenes)} scanned ({len(bad)} skipped), "
      f"{sum(len(d.get('shots', [])) for d in scenes)} shots")
for d in bad:
    print(f"  skipped {d.get('video')}: {d.get('error')}")
queue = load(state / "queue.json") or {}
queued = len(queue.get("items", []))
ids, frames, faces = set(), 0, 0
log = state / "faces" / "frames.jsonl"
if log.is_file():
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("id") not in ids:
            ids.add(r.get("id"))
            frames += len(r.get("frames", []))
            faces += sum(len(f.get("faces", [])) for f in r.get("frames", []))
print(f"shots scored: {len(ids)} of {queued} queued; frames scored {frames}, faces {faces}")
tracks = load(state / "tracks.json")
if tracks:
    print(f"tracks {len(tracks.get('tracks', []))}, segments {len(tracks.get('segments', []))}")
plan = load(out / "plan.json")
on_disk = sum(1 for p in out.glob("*/*.mp4") if not p.name.startswith("."))
if plan:
    print(f"clips: {len(plan.get('clips', []))} in plan.json ({plan.get('mode')}), "
          f"{on_disk} on disk")
else:
    print(f"clips: {on_disk} on disk, no plan.json yet")
logs = sorted((state / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
if logs:
    tail = logs[-1].read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    print(f"last log {logs[-1]}: {tail[0] if tail else ''}")
PY
