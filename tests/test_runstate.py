"""run_state.json (formats.runstate): written as `run` records steps, read back only when it
has the shape written; anything else is no state (every step redone)."""
from __future__ import annotations

import json

from facesets.formats.runstate import STATE_FILE, STATE_VERSION, RunState


def test_finished_steps_read_back(tmp_path):
    path = tmp_path / STATE_FILE
    RunState.load(path).finish("embed", "abc", {"new": 3})
    data = json.loads(path.read_text())
    assert data["version"] == STATE_VERSION and list(data["steps"]["embed"]) == [
        "inputs", "finished", "summary"]
    state = RunState.load(path)
    assert state.done("embed", "abc") and not state.done("embed", "other")
    assert not state.done("cluster", "abc")


def test_a_state_of_another_shape_is_no_state(tmp_path):
    path = tmp_path / STATE_FILE
    for data in ([], {"version": 2, "steps": {}}, {"version": STATE_VERSION, "steps": []},
                 {"version": STATE_VERSION, "steps": {"embed": "abc"}},
                 {"version": STATE_VERSION, "steps": {"embed": {"inputs": 5}}}):
        path.write_text(json.dumps(data))
        assert RunState.load(path).steps == {}
