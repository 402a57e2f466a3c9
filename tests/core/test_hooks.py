"""One fork/exit hook helper (usageledger._hooks): the only registration of
os.register_at_fork and atexit in the package; callbacks run in a defined order, a failing
one does not stop the others, objects are held weakly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "usageledger"


def run(script: str) -> str:
    """Run ``script`` in a fresh interpreter (its callbacks stay out of this test process)."""
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


FORK = """
    import json, os

    def fork_and_report(report):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, json.dumps(report()).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        return json.loads(data)
"""


def test_only_the_helper_registers_process_hooks():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "_hooks.py":
            continue
        code = path.read_text()
        if re.search(r"register_at_fork\(|atexit\.register\(", code):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_child_callbacks_run_in_order_and_a_failure_does_not_stop_the_others():
    out = run(FORK + """
    from usageledger import _hooks

    calls = []

    class Holder:
        def _after_fork_child(self):
            calls.append("object")

    def boom():
        calls.append("boom")
        raise RuntimeError("a broken callback")

    holder = Holder()
    # registered restart first: it still runs after every reset
    _hooks.on_fork(restart_in_child=lambda: calls.append("restart"))
    _hooks.on_fork(after_in_child=boom)
    _hooks.on_fork(after_in_child=lambda: calls.append("reset"))
    _hooks.reset_in_child(holder)
    parent = []
    _hooks.on_fork(before=lambda: parent.append("before"), after_in_parent=lambda: parent.append("parent"))
    print(json.dumps([fork_and_report(lambda: calls), parent, calls]))
    """)
    child, parent, here = json.loads(out)
    assert child == ["boom", "reset", "object", "restart"]
    assert parent == ["before", "parent"] and here == []  # nothing of the child's ran here


def test_objects_are_held_weakly():
    out = run(FORK + """
    import gc
    from usageledger import _hooks

    seen = []

    class Holder:
        def _after_fork_child(self):
            seen.append(1)

    kept, dropped = Holder(), Holder()
    _hooks.reset_in_child(kept)
    _hooks.reset_in_child(dropped)
    del dropped
    gc.collect()
    print(json.dumps(fork_and_report(lambda: seen)))
    """)
    assert json.loads(out) == [1]  # the dropped one: not kept alive, not called


def test_exit_callbacks_run_newest_first_at_exit_and_in_multiprocessing_children(tmp_path):
    out = tmp_path / "out.txt"
    script = f"""
        import multiprocessing as mp
        from usageledger import _hooks

        def note(what):
            return lambda: open({str(out)!r}, "a").write(what + "\\n")

        _hooks.at_exit(note("first"))
        _hooks.at_exit(note("second"))

        def child():
            _hooks.at_exit(note("child"))

        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            p = ctx.Process(target=child)
            p.start()
            p.join()
    """
    run(script)
    lines = out.read_text().split()
    # the child (ended with os._exit) ran its callbacks, newest first; then the parent at exit
    assert lines == ["child", "second", "first", "second", "first"]
