"""The test-only crash hook: MAILSYNC_CRASH_AT=N kills the process (as kill -9 would) at
the N-th step of a run.  Crash tests rerun with N = 1, 2, ... until a run completes.

Each place where the engine has made something durable calls step(); one counter for
the whole process, so the steps of every module count in the order they happen.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("mailsync")

_CRASH_AT = int(os.environ.get("MAILSYNC_CRASH_AT") or 0)
_steps = 0


def step(what: str) -> None:
    global _steps
    if _CRASH_AT:
        _steps += 1
        if _steps >= _CRASH_AT:
            log.debug("crash hook: exiting at step %d (%s)", _steps, what)
            os._exit(137)
