"""runtime.jobs: the one job loop (flush points, failures, Ctrl-C), without models or photos."""
from __future__ import annotations

from facesets.runtime.jobs import ERROR, FAILED, NOFACE, OK, Job, run_items


class Recorder(Job):
    """Records each item in ``pending``; ``flush`` moves them to ``durable``."""

    def __init__(self, statuses: dict, refuse=(), interrupt_at=None):
        self.statuses, self.refuse, self.interrupt_at = statuses, set(refuse), interrupt_at
        self.pending, self.durable, self.flushes, self.failures = [], [], [], []
        self.interrupted = False

    def check(self, item):
        return "refused" if item in self.refuse else ""

    def process(self, items):
        for item in items:
            if item == self.interrupt_at:
                self.pending.append("half")   # recorded in part when Ctrl-C comes
                raise KeyboardInterrupt
            status = self.statuses.get(item, OK)
            if status != FAILED:
                self.pending.append(item)
            yield item, status, f"detail {item}"

    def failed(self, item, why):
        self.failures.append((item, why))

    def flush(self):
        self.flushes.append(len(self.pending))
        self.durable += self.pending
        self.pending = []

    def on_interrupt(self):
        self.interrupted = True
        if self.pending and self.pending[-1] == "half":
            self.pending.pop()


def test_flushes_every_n_recorded_items_and_at_the_end():
    job = Recorder({2: NOFACE, 4: ERROR, 5: FAILED}, refuse=[7])
    result = run_items(job, list(range(10)), flush_every=3, progress=False)
    # failed and refused items record nothing and do not fill the flush window
    assert job.flushes == [3, 3, 2]
    assert job.durable == [0, 1, 2, 3, 4, 6, 8, 9]
    assert job.failures == [(5, "detail 5"), (7, "refused")]
    assert dict(result.counts) == {OK: 6, NOFACE: 1, ERROR: 1, FAILED: 2}
    assert result.recorded == 8 and not result.interrupted and not job.interrupted


def test_ctrl_c_drops_the_half_recorded_item_then_flushes():
    job = Recorder({}, interrupt_at=5)
    result = run_items(job, list(range(10)), flush_every=3, progress=False)
    assert result.interrupted and job.interrupted
    assert job.durable == [0, 1, 2, 3, 4] and job.flushes == [3, 2]
    assert result.recorded == 5


def test_no_items_still_flushes_once():
    job = Recorder({})
    result = run_items(job, [], flush_every=3, progress=True)
    assert job.flushes == [0] and result.recorded == 0
