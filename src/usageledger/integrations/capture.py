"""Automatic capture: ``usageledger.instrument(target)`` meters every OpenAI, Anthropic and
LiteLLM call of the process.

How it works. :func:`instrument` replaces a few methods on the SDKs' resource classes
(``Completions.create``, ``Messages.stream``...) with wrappers made here, and registers a
LiteLLM callback. A wrapper reads the attributes in context, asks the guards, calls the
original method, and then extracts the usage of the result (for a stream: of the items the
user iterates, through an observer put in place of the stream's own iterator, so the user
keeps the SDK's very object). The record goes to every active handle's target with that
target's own API (``Meter.record``, ``PersistentDelivery.enqueue``...).

Rules kept here, each with a test in ``tests/integrations/test_capture_*.py``:

- the SDK's exceptions propagate unchanged and a failed call records nothing; an exception
  of ours (extraction, a target refusing a record) is logged once per kind, counted
  (:func:`capture_errors`), and never reaches the caller;
- a guard's exception (a budget refusal) propagates before any request is sent;
- a stream records once: at its end, at ``close()``, or when it is dropped half-read (the
  usage seen so far);
- SDKs that are installed but not imported yet are patched when they are imported, so
  ``instrument()`` costs no import of ``openai``, ``anthropic`` or ``litellm``;
- patching happens once whatever the number of handles; the wrappers read an immutable
  per-provider plan, so instrumenting and uninstrumenting are safe while calls run in
  other threads; the registry lock is renewed in a forked child.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core import _hooks
from ._capture_calls import Plan, capture_errors, plans, report
from ._common import recorder_for

__all__ = ["instrument", "uninstrument", "Instrumentation", "capture_errors", "PROVIDERS"]

log = logging.getLogger("usageledger.capture")

#: what ``instrument(providers=...)`` accepts, and the module each one needs
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "litellm": "litellm"}


# -- handles ------------------------------------------------------------------------------
class Instrumentation:
    """What :func:`instrument` returns: the target records go to, for ``providers``.
    ``uninstrument()`` stops this handle (the SDKs are restored when no handle is left)."""

    def __init__(self, target: Any, providers: frozenset[str], stream_usage: bool,
                 guard: Any):
        self.target = target
        self.providers = providers
        self.stream_usage = stream_usage
        self.guard = guard
        self._record = recorder_for(target)
        self.active = True

    def emit(self, fields: dict[str, Any]) -> None:
        """Record ``fields`` with the target; never raises (a failure is counted)."""
        try:
            self._record(fields)
        except Exception as exc:
            report("recording into " + type(self.target).__name__, exc)

    def uninstrument(self) -> None:
        """Stop capturing into this target; restores the SDKs' original methods when no
        other handle is active. Calling it again does nothing."""
        _registry.remove(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "stopped"
        return (f"<Instrumentation {state} target={type(self.target).__name__} "
                f"providers={sorted(self.providers)}>")


def _provider_module(provider: str) -> Any:
    if provider == "openai":
        from . import _capture_openai as mod
    elif provider == "anthropic":
        from . import _capture_anthropic as mod
    else:
        from . import litellm as mod
    return mod


@dataclass
class _Registry:
    lock: threading.RLock = field(default_factory=threading.RLock)
    handles: list[Instrumentation] = field(default_factory=list)
    #: provider -> what was done to install it: patches, or the LiteLLM callback
    installed: dict[str, Any] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)  # installed at import

    def add(self, target: Any, providers: frozenset[str], stream_usage: bool,
            guard: Any) -> Instrumentation:
        with self.lock:
            for h in self.handles:
                if h.target is target:
                    if (h.providers, h.stream_usage, h.guard) != (providers, stream_usage, guard):
                        raise ValueError(
                            f"{type(target).__name__} target is already instrumented with "
                            f"providers={sorted(h.providers)}, stream_usage={h.stream_usage}, "
                            f"guard={h.guard!r}; call uninstrument() on that handle first")
                    return h  # the same call twice: one handle, nothing patched twice
            handle = Instrumentation(target, providers, stream_usage, guard)
            self.handles.append(handle)
            self._update()
            return handle

    def remove(self, handle: Instrumentation | None = None) -> None:
        with self.lock:
            for h in list(self.handles) if handle is None else [handle]:
                if h in self.handles:
                    self.handles.remove(h)
                h.active = False
            self._update()

    def _update(self) -> None:
        """Plans from the active handles; install what a handle needs, remove what none
        needs (called under the lock)."""
        for provider in PROVIDERS:
            handles = tuple(h for h in self.handles if provider in h.providers)
            if handles:
                plans[provider] = Plan(
                    handles,
                    tuple(h.guard for h in handles if h.guard is not None),
                    any(h.stream_usage for h in handles),
                )
                self._install(provider)
            else:
                plans[provider] = None
                self._uninstall(provider)

    def _install(self, provider: str) -> None:
        if provider in self.installed or provider in self.waiting:
            return
        module = PROVIDERS[provider]
        if module in sys.modules:
            self._install_now(provider)
        elif _installed(module):
            self.waiting.add(provider)
            _import_hook.watch(module, lambda: self._on_import(provider))

    def _on_import(self, provider: str) -> None:
        with self.lock:
            if provider in self.waiting:
                self.waiting.discard(provider)
                if plans.get(provider) is not None:
                    self._install_now(provider)

    def _install_now(self, provider: str) -> None:
        try:
            done = _provider_module(provider).install()
        except Exception as exc:
            report(f"instrumenting {provider}", exc)
            return
        self.installed[provider] = done

    def _uninstall(self, provider: str) -> None:
        if provider in self.waiting:
            self.waiting.discard(provider)
            _import_hook.unwatch(PROVIDERS[provider])
        done = self.installed.pop(provider, None)
        if done is not None:
            try:
                _provider_module(provider).uninstall(done)
            except Exception as exc:
                report(f"uninstrumenting {provider}", exc)

    def after_fork_in_child(self) -> None:
        # a lock held by another thread at fork time would never be released in the child
        self.lock = threading.RLock()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _ImportHook(importlib.abc.MetaPathFinder):
    """Runs a function right after a watched top-level module is imported (so an SDK
    installed but not used is never imported by us: LiteLLM's import takes seconds and
    fetches a price list over the network)."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()

    def watch(self, module: str, callback: Callable[[], None]) -> None:
        with self._lock:
            self.callbacks[module] = callback
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def unwatch(self, module: str) -> None:
        with self._lock:
            self.callbacks.pop(module, None)
            if not self.callbacks and self in sys.meta_path:
                sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        hook = self

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                # the module keeps the real loader: nothing of ours stays visible
                spec.loader = loader
                module.__loader__ = loader
                loader.exec_module(module)
                with hook._lock:
                    callback = hook.callbacks.pop(fullname, None)
                    if not hook.callbacks and hook in sys.meta_path:
                        sys.meta_path.remove(hook)
                if callback is not None:
                    try:
                        callback()
                    except Exception as exc:
                        report(f"instrumenting {fullname} at import", exc)

        spec.loader = _Then()
        return spec

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


_registry = _Registry()
_import_hook = _ImportHook()


def _after_fork_in_child() -> None:
    _registry.after_fork_in_child()
    _import_hook.after_fork_in_child()


_hooks.on_fork(after_in_child=_after_fork_in_child)


# -- public ---------------------------------------------------------------------------------
def instrument(
    target: Any,
    *,
    providers: Iterable[str] | None = None,
    stream_usage: bool = True,
    guard: Any = None,
) -> Instrumentation:
    """Record the usage of every OpenAI, Anthropic and LiteLLM call of this process with
    ``target`` (a Meter, PersistentDelivery, UsageTracker, or anything with
    ``record(**fields)``).

    ``providers``: a subset of ``("openai", "anthropic", "litellm")`` (default: all; an
    SDK that is not installed is skipped, one installed later in the process's life is
    patched when imported). ``stream_usage``: ask OpenAI Chat Completions streams for
    their usage when the caller did not (the extra usage-only chunk is taken out before
    the caller sees it). ``guard``: an object whose ``require(user_id=, customer_key=,
    session_id=, tags=)`` is called with the attributes in context before each SDK
    request; its exception propagates and no request is sent.

    Calling it again with the same target returns the same handle; another target gets
    its own handle and every call is recorded with each."""
    if providers is None:
        chosen = frozenset(PROVIDERS)
    else:
        if isinstance(providers, str):
            providers = (providers,)
        chosen = frozenset(providers)
        unknown = sorted(chosen - set(PROVIDERS))
        if unknown:
            raise ValueError(f"instrument(providers=...) has unknown providers {unknown}; "
                             f"known: {sorted(PROVIDERS)}")
    if not isinstance(stream_usage, bool):
        raise TypeError(f"instrument(stream_usage=...) must be True or False, got {stream_usage!r}")
    if guard is not None and not callable(getattr(guard, "require", None)):
        raise TypeError(f"instrument(guard=...) must have a require(**attributes) method, "
                        f"got {type(guard).__name__}")
    return _registry.add(target, chosen, stream_usage, guard)


def uninstrument(handle: Instrumentation | None = None) -> None:
    """Stop capturing (every handle, or only ``handle``) and restore the SDKs' original
    methods once no handle needs them."""
    _registry.remove(handle)
