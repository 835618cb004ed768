"""The run state of `run` (docs/manifest-format.md, "Run state"): OUT/run_state.json, written
atomically after every step, records each finished step with a digest of the inputs it saw
and a small summary. A state this face-sets cannot read as such (another version, another
shape) counts as no state: every step is redone (each one is idempotent).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io.fsutil import atomic_write_json, read_json

STATE_FILE = "run_state.json"
STATE_VERSION = 1


def _valid_steps(steps) -> bool:
    """``steps`` is {step name: {"inputs": digest, ...}}, as ``RunState.finish`` writes it."""
    return isinstance(steps, dict) and all(
        isinstance(name, str) and isinstance(rec, dict) and isinstance(rec.get("inputs"), str)
        for name, rec in steps.items())


def step_record(inputs: str, summary: dict) -> dict:
    """A finished step: the digest of its inputs, when it finished, its summary."""
    return {"inputs": inputs, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": summary}


@dataclass
class RunState:
    path: Path
    steps: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "RunState":
        if not path.is_file():
            return cls(path)
        data = read_json(path)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION \
                or not _valid_steps(data.get("steps", {})):
            return cls(path)   # unknown state: redo everything (every step is idempotent)
        return cls(path, dict(data.get("steps", {})))

    def done(self, step: str, inputs: str) -> bool:
        return self.steps.get(step, {}).get("inputs") == inputs

    def finish(self, step: str, inputs: str, summary: dict) -> None:
        self.steps[step] = step_record(inputs, summary)
        atomic_write_json(self.path, {"version": STATE_VERSION, "steps": self.steps})
