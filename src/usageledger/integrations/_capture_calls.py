"""What a captured call does, for every provider: the per-provider plans the wrappers read,
one call's life (guards, timing, the record), streams observed to their end, the patches
themselves, and the errors of ours counted rather than raised. The provider modules
(`_capture_openai`, `_capture_anthropic`, `litellm`) build on this; `capture` installs them."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..core import _hooks
from .context import _current

log = logging.getLogger("usageledger.capture")


@dataclass(frozen=True)
class Plan:
    """What a wrapper does for one provider, swapped whole when handles change (a call
    keeps the plan it started with, so a stream begun before ``uninstrument`` still
    records once)."""

    handles: tuple[Any, ...]  # the active Instrumentation handles
    guards: tuple[Any, ...] = ()
    stream_usage: bool = True


#: provider -> current plan; None (or absent) when nothing captures that provider
plans: dict[str, Plan | None] = {}


# -- errors -------------------------------------------------------------------------------
_errors: dict[str, int] = {}
_errors_lock = threading.Lock()


def report(where: str, exc: BaseException) -> None:
    """Count an exception of ours; log it the first time its kind is seen. Never raises."""
    kind = f"{where}: {type(exc).__name__}"
    with _errors_lock:
        seen = _errors.get(kind, 0)
        _errors[kind] = seen + 1
    if not seen:
        log.warning("usageledger capture: %s failed (%s: %s); the call itself is not "
                    "affected. Further errors of this kind are counted, not logged "
                    "(usageledger.integrations.capture.capture_errors()).",
                    where, type(exc).__name__, exc, exc_info=exc)


def capture_errors() -> dict[str, int]:
    """How many times each kind of capture failure happened in this process
    (``"<where>: <ExceptionType>" -> count``)."""
    with _errors_lock:
        return dict(_errors)


# -- one captured call ----------------------------------------------------------------------
def guard_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords a guard's ``require`` gets: the four attributes, None when unset."""
    return {"user_id": attrs.get("user_id"), "customer_key": attrs.get("customer_key"),
            "session_id": attrs.get("session_id"), "tags": attrs.get("tags")}


def check_guards(plan: Plan, attrs: Mapping[str, Any]) -> None:
    """Ask every guard before a request is sent; their exceptions propagate on purpose."""
    kwargs = guard_attributes(attrs)
    for guard in plan.guards:
        guard.require(**kwargs)


def begin(provider: str) -> tuple[Plan, Mapping[str, Any]] | None:
    """What every SDK wrapper does first: the plan and the attributes in context, the
    guards asked (their refusal propagates); None when the wrapper must only pass
    through (see :func:`skip`)."""
    plan = plans.get(provider)
    if plan is None or skip(plan):
        return None
    attrs = _current.get()
    if plan.guards:
        check_guards(plan, attrs)
    return plan, attrs


def skip(plan: Plan | None) -> bool:
    """True when an SDK wrapper must only pass through: nothing captures its provider,
    or LiteLLM is the caller while LiteLLM's own callback records the call (one record)."""
    return plan is None or (plans.get("litellm") is not None and called_from_litellm())


def called_from_litellm() -> bool:
    """Whether the first caller outside the SDKs and this package is LiteLLM (a walk of a
    few frames: under 0.4 us measured on the loaded test machine, paid only while the
    LiteLLM callback is active)."""
    frame: Any = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(("openai.", "anthropic.", "usageledger.integrations.")):
            frame = frame.f_back
            continue
        return name == "litellm" or name.startswith("litellm.")
    return False


class Call:
    """One captured SDK call: what is known before it (plan, attributes, start time) and
    how its usage becomes a record."""

    __slots__ = ("plan", "attrs", "provider", "operation", "tags", "stream", "t0", "p0")

    def __init__(self, plan: Plan, attrs: Mapping[str, Any], provider: str, operation: str,
                 *, stream: bool = False, tags: dict[str, str] | None = None):
        self.plan = plan
        self.attrs = attrs
        self.provider = provider
        self.operation = operation
        self.stream = stream
        self.tags = tags
        self.start()

    def start(self) -> None:
        """(Re)start the clock: the call's event time and the origin of its latency."""
        self.t0 = time.time()
        self.p0 = time.perf_counter()

    def emit(self, usage: dict[str, Any]) -> None:
        """Complete ``usage`` (``make_usage_record`` keywords from a response) with the
        attributes, the call's time and latency, and record it with every handle."""
        latency_ms = round((time.perf_counter() - self.p0) * 1000.0, 3)
        fields = usage
        fields["provider"] = self.provider
        attrs = self.attrs
        if attrs:
            fields.update(attrs)
        if self.tags:
            fields["tags"] = {**attrs.get("tags", {}), **self.tags}
        fields["timestamp"] = datetime.fromtimestamp(self.t0, UTC)
        payload: dict[str, Any] = {"operation": self.operation, "latency_ms": latency_ms}
        if self.stream:
            payload["stream"] = True
        fields["payload"] = payload
        for handle in self.plan.handles:
            handle.emit(fields)


class StreamUsage:
    """Usage seen in a stream's items, recorded once by :meth:`finish`. Subclasses read
    the items of one API (``see`` returns False for an item the user must not get: the
    usage-only chunk we asked for)."""

    where = "stream"

    def __init__(self, call: Call):
        self.call = call
        self._once = threading.Lock()

    def see(self, item: Any) -> bool:
        raise NotImplementedError

    def usage(self) -> dict[str, Any] | None:
        """``make_usage_record`` keywords from what was seen; None when nothing was."""
        raise NotImplementedError

    def finish(self) -> None:
        """Record the usage seen so far, the first time only. Never raises."""
        if not self._once.acquire(blocking=False):
            return
        try:
            usage = self.usage()
            if usage is not None:
                self.call.emit(usage)
        except Exception as exc:
            report(self.where, exc)


def _keep(seen: StreamUsage, item: Any) -> bool:
    try:
        return seen.see(item)
    except Exception as exc:
        report(seen.where, exc)
        return True


def observe(iterator: Iterable[Any], seen: StreamUsage) -> Any:
    """The stream's items through ``seen``; records when the stream ends, fails, or this
    generator is closed or dropped (an abandoned stream)."""
    try:
        for item in iterator:
            if _keep(seen, item):
                yield item
    finally:
        seen.finish()


async def observe_async(iterator: Any, seen: StreamUsage) -> Any:
    try:
        async for item in iterator:
            if _keep(seen, item):
                yield item
    finally:
        seen.finish()


class _Close:
    """Put as a stream's ``close``: records what was seen, then closes as the SDK does.
    Holds the stream weakly (a strong reference from the stream's own dict would make a
    cycle and delay the recording of a dropped stream until a garbage collection)."""

    __slots__ = ("_stream", "_seen")

    def __init__(self, stream: Any, seen: StreamUsage):
        import weakref

        self._stream = weakref.ref(stream)
        self._seen = seen

    def __call__(self) -> Any:
        self._seen.finish()
        stream = self._stream()
        if stream is not None:
            return type(stream).close(stream)
        return None


def watch_stream(stream: Any, seen: StreamUsage) -> Any:
    """Observe an SDK ``Stream``/``AsyncStream`` in place: its iterator is replaced by an
    observer of it, its ``close`` records first. The user keeps the same object."""
    inner = stream._iterator  # anthropic makes it on first use (a cached property)
    if hasattr(inner, "__anext__"):
        stream._iterator = observe_async(inner, seen)
    else:
        stream._iterator = observe(inner, seen)
    stream.close = _Close(stream, seen)
    return stream


# -- patching -------------------------------------------------------------------------------
@dataclass
class Patch:
    """One method replaced on one class."""

    owner: type
    name: str
    wrapper: Callable[..., Any]
    original: Any = None
    had_own: bool = False

    def apply(self) -> None:
        self.had_own = self.name in vars(self.owner)
        self.original = vars(self.owner).get(self.name, getattr(self.owner, self.name))
        setattr(self.owner, self.name, self.wrapper)

    def revert(self) -> None:
        if vars(self.owner).get(self.name) is not self.wrapper:
            # someone wrapped ours since: leave theirs (ours stays, dormant, passing through)
            log.debug("%s.%s was replaced after instrument(); left as it is",
                      self.owner.__qualname__, self.name)
            return
        if self.had_own:
            setattr(self.owner, self.name, self.original)
        else:
            delattr(self.owner, self.name)


def revert_patches(patches: list[Patch]) -> None:
    """Undo a provider's patches, newest first (what each provider's ``uninstall`` is)."""
    for patch in reversed(patches):
        patch.revert()


def _after_fork_in_child() -> None:
    global _errors_lock
    _errors_lock = threading.Lock()


_hooks.on_fork(after_in_child=_after_fork_in_child)
