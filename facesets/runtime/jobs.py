"""The one job loop: progress, flush every N items, Ctrl-C -> flush and stop, summary."""
from __future__ import annotations

DEFAULT_FLUSH_EVERY = 50
