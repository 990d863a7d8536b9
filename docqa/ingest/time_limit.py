"""The --file-timeout limit: the CPU seconds one file may spend being hashed, read and chunked."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

# After the limit is reached SIGPROF repeats every REPEAT CPU seconds: one that lands in a finalizer is
# swallowed there ("Exception ignored in ..."), and the next one must still stop the file.
REPEAT = 0.5


class FileTimeout(BaseException):
    """Reading one file used up --file-timeout. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in pypdf or the readers can swallow it."""


def timeout_reason(seconds: float, doing: str = "reading") -> str:
    """The one-line reason an ingest reports for a file stopped by --file-timeout."""
    # "took longer than N s" is kept word for word: benchmarks/hostile_input.py looks for it.
    return (f"{doing} took longer than {seconds:g} s of CPU time (--file-timeout): a damaged or hostile file? "
            "If it is only large, raise --file-timeout")


def time_limited(items: Iterator[T], seconds: float) -> Iterator[T]:
    """Yield from `items`, raising FileTimeout once producing them (not consuming them) has used `seconds`
    of this thread's CPU time.

    Reading and chunking are what a hostile file controls (a cyclic PDF, a 5 MB line); embedding and
    storing are bounded by the text they get, so they do not count. CPU time rather than wall time: on a
    loaded machine a sound 2,415-page PDF spent over 300 s of wall time (and 33 s of CPU) being read, and
    a wall-clock limit threw away all of it. CPU time measures the file, not how busy the machine is.

    How: ITIMER_PROF counts the CPU time of the whole process (every thread) and sends SIGPROF. It is
    armed only while `items` produces. Since the process's CPU time grows at least as fast as this
    thread's, SIGPROF comes no later than this thread's budget runs out; the handler then checks this
    thread's own clock and, if other threads (torch's pool, an application's) made it come early, re-arms
    for what is left. So no other thread's work is charged to the file.

    What it cannot stop: a read blocked in the kernel uses no CPU. That is why the ingest never opens
    anything but a regular file (see files.open_regular). Signal handlers run only in the main thread;
    elsewhere the items pass through unlimited. An outer ITIMER_PROF (a profiler's) is put back afterwards.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield from items
        return

    used = 0.0  # this thread's CPU seconds inside next(items), up to the current call
    started = 0.0  # time.thread_time() when the current call began
    armed = False

    def expire(*_: object) -> None:
        if not armed:  # a SIGPROF already on its way when the timer was stopped
            return
        left = seconds - used - (time.thread_time() - started)
        if left > 0:  # other threads' CPU time brought it early
            signal.setitimer(signal.ITIMER_PROF, left, REPEAT)
            return
        raise FileTimeout

    entered = time.process_time()
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_PROF)
    outer_handler = signal.signal(signal.SIGPROF, expire)
    try:
        while True:
            if used >= seconds:
                raise FileTimeout
            started = time.thread_time()
            armed = True
            signal.setitimer(signal.ITIMER_PROF, seconds - used, REPEAT)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                armed = False  # first: a handler running now must not re-arm the timer
                signal.setitimer(signal.ITIMER_PROF, 0)
                used += time.thread_time() - started
            yield item
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)  # never left running: SIGPROF's default action ends the process
        if outer_handler is not None:  # None: installed from C, which Python cannot put back
            signal.signal(signal.SIGPROF, outer_handler)
        if outer_delay:
            spent = time.process_time() - entered
            signal.setitimer(signal.ITIMER_PROF, max(outer_delay - spent, 0.001), outer_interval)
