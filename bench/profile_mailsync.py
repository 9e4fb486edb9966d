"""Run mailsync under cProfile in every thread and write one merged profile.

    python bench/profile_mailsync.py [--clock cpu|wall] OUT.prof -- [mailsync args...]

``python -m cProfile`` sees only the main thread; mailsync syncs folders in worker
threads (--jobs) and writes messages on writer threads, so here each thread gets its
own profiler (threading.Thread.run is wrapped before mailsync starts any) and the
profiles are added up at exit.

``--clock cpu`` (default) times each thread by its own CPU time (time.thread_time): the
totals add up to the process's CPU time, and waiting (for the network, fsync, the GIL or
other threads) costs nothing.  ``--clock wall`` uses the wall clock: blocking calls
such as fsync and socket reads show up, but threads that ran at once add up (the total
can exceed the wall time) and time spent waiting for the GIL is charged to whatever
function was running.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
import time


def main() -> None:
    argv = sys.argv[1:]
    clock = "cpu"
    if argv[:1] == ["--clock"] and len(argv) > 1:
        clock, argv = argv[1], argv[2:]
    if clock not in ("cpu", "wall") or len(argv) < 2 or argv[1] != "--":
        sys.exit(__doc__)
    out, args = argv[0], argv[2:]

    def new_profiler() -> cProfile.Profile:
        return cProfile.Profile(time.thread_time) if clock == "cpu" else cProfile.Profile()

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profiler = new_profiler()
        with lock:
            profiles.append(profiler)
        profiler.enable()
        try:
            original_run(self)
        finally:
            profiler.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profiler = new_profiler()
    sys.argv = ["mailsync", *args]
    code = 0
    main_profiler.enable()
    try:
        runpy.run_module("mailsync", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        main_profiler.disable()
        stats = pstats.Stats(main_profiler)
        with lock:
            for profiler in profiles:
                try:
                    stats.add(profiler)
                except TypeError:  # a thread that never ran any Python code
                    pass
        stats.dump_stats(out)
    sys.exit(code)


if __name__ == "__main__":
    main()
