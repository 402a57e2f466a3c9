"""Process signals belong to the application's main thread.

The kernel hands a process-directed signal (SIGTERM from `kill`, SIGINT) to any thread that
does not block it. When it picks one of our background threads, CPython only sets a flag:
a main thread blocked in a system call (``sys.stdin.read()``, ``select``, a socket read)
is not interrupted, so neither our SIGTERM flush nor the application's own handler runs
and the process ignores the signal until that call returns. Every thread of ours blocks
these signals for itself at start, so the kernel delivers them to a thread that can act
on them. (A signal that lands on the main thread just before it enters such a call is
still only seen when the call returns: that part is CPython's, and an application that
waits for signals should wait in short slices.)
"""

from __future__ import annotations

import signal

__all__ = ["leave_signals_to_main_thread"]

_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def leave_signals_to_main_thread() -> None:
    """Call first thing in a background thread of ours."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    except (AttributeError, OSError, ValueError):  # a platform without per-thread masks
        pass
