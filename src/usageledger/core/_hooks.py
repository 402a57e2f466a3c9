"""Process hooks: the package's one registration of ``os.register_at_fork`` and ``atexit``.

Modules add what they must do around a fork or at exit here instead of registering hooks
of their own:

- :func:`on_fork` — module-level callbacks: ``before`` (in the forking thread, newest
  first, as ``os.register_at_fork`` orders them), ``after_in_parent``, ``after_in_child``
  (in order of registration) and ``restart_in_child``, which runs after every
  ``after_in_child`` callback: threads restarted in the child find every lock and handle
  of the package already renewed;
- :func:`reset_in_child` — an object whose method runs in the child for as long as the
  object lives (held weakly: registering keeps nothing alive);
- :func:`at_exit` — callbacks for interpreter exit, run newest first; they also run when a
  ``multiprocessing`` child ends, which it does with ``os._exit``, where no ``atexit``
  callback runs (every buffered record of such a child was lost: 800 of 800 measured).

One callback that raises is logged and the others still run.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["on_fork", "reset_in_child", "at_exit", "run_at_exit"]

log = logging.getLogger("usageledger")

Callback = Callable[[], None]

_lock = threading.Lock()
_before: list[Callback] = []
_in_parent: list[Callback] = []
_in_child: list[Callback] = []
_restart_in_child: list[Callback] = []
_at_exit: list[Callback] = []
#: id(obj) -> (weak reference, method name); insertion order is registration order
_objects: dict[int, tuple[weakref.ref[Any], str]] = {}
_exit_registered = False


def on_fork(
    *,
    before: Callback | None = None,
    after_in_parent: Callback | None = None,
    after_in_child: Callback | None = None,
    restart_in_child: Callback | None = None,
) -> None:
    """Add module-level fork callbacks (add each once: a module calls this at import, or
    guarded by its own flag)."""
    with _lock:
        for fn, where in ((before, _before), (after_in_parent, _in_parent),
                          (after_in_child, _in_child), (restart_in_child, _restart_in_child)):
            if fn is not None:
                where.append(fn)


def reset_in_child(obj: Any, method: str = "_after_fork_child") -> None:
    """Call ``obj.<method>()`` in the child of every fork while ``obj`` lives, with the
    other ``after_in_child`` callbacks (before threads are restarted)."""
    key = id(obj)

    def forget(_: weakref.ref[Any], key: int = key) -> None:
        _objects.pop(key, None)

    with _lock:
        _objects[key] = (weakref.ref(obj, forget), method)


def at_exit(fn: Callback) -> None:
    """Run ``fn`` at interpreter exit (and at the end of a ``multiprocessing`` child)."""
    global _exit_registered
    with _lock:
        _at_exit.append(fn)
        if not _exit_registered:
            # registered with the first callback, not at import: the flush then runs before
            # the exit callbacks the application registered earlier (atexit is last-in,
            # first-out), as it did when the pipeline registered its own
            _exit_registered = True
            atexit.register(run_at_exit)


def run_at_exit() -> None:
    for fn in reversed(list(_at_exit)):
        _call(fn, "exit")


def _call(fn: Callback, when: str) -> None:
    try:
        fn()
    except Exception:
        log.exception("usageledger %s hook %r failed", when, fn)


def _run_before() -> None:
    _lock.acquire()  # no registration half done across the fork; released on both sides
    if _at_exit:
        _register_multiprocessing_finalizer()
    for fn in reversed(_before):
        _call(fn, "before-fork")


def _run_after_in_parent() -> None:
    try:
        for fn in _in_parent:
            _call(fn, "after-fork")
    finally:
        _lock.release()


def _run_after_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may be held by a thread that does not exist here
    for fn in list(_in_child):
        _call(fn, "after-fork (child)")
    for ref, method in list(_objects.values()):
        obj = ref()
        if obj is not None:
            _call(getattr(obj, method), "after-fork (child)")
    for fn in list(_restart_in_child):
        _call(fn, "after-fork restart (child)")


class _MultiprocessingChild:
    """Children of ``multiprocessing`` (``Process``, ``Pool``) end with ``os._exit``: no
    atexit callback runs there. Their own finalizers do run: the exit callbacks run in one."""

    def after_fork(self) -> None:
        import multiprocessing.util as mp_util

        mp_util.Finalize(None, run_at_exit, exitpriority=100)


_mp_child = _MultiprocessingChild()


def _register_multiprocessing_finalizer() -> None:
    # only where multiprocessing is in use (it is imported before it forks): an application
    # that never imports it pays nothing, and one where it cannot be imported still works
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.register_after_fork(_mp_child, _MultiprocessingChild.after_fork)  # idempotent


os.register_at_fork(before=_run_before, after_in_parent=_run_after_in_parent,
                    after_in_child=_run_after_in_child)
