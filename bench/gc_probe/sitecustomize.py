"""Loaded by the processes a benchmark starts with this folder on PYTHONPATH (bench/storm.py does so for
`cyan serve` and its device processes): with CYAN_BENCH_GC_LOG set, each process writes a line per full
garbage collection (the monotonic time it ended, its length in ms) to that path suffixed with its pid. The
product is unchanged; this only times what its collector does."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

_path = os.environ.get("CYAN_BENCH_GC_LOG")

if _path:
    _log = open(f"{_path}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - open for the process's life
    _started = [0.0]

    def _time_full_collections(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        now = time.monotonic()
        if phase == "start":
            _started[0] = now
        else:
            _log.write(f"{now:.6f} {(now - _started[0]) * 1000:.3f}\n")

    # First, so that the time includes no other callback's work.
    gc.callbacks.insert(0, _time_full_collections)
