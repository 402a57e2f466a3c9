"""What the provider integrations share: reading SDK objects or dicts, and handing the
extracted fields to a Meter, UsageTracker or PersistentDelivery."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..schema.records import DETAIL_TOKEN_FIELDS, TOKEN_FIELDS, make_usage_record

__all__ = ["get", "count", "response_id", "model_of", "record_to", "recorder_for", "track_item"]


_MISSING = object()


#: per type: does it hold pydantic fields (read from ``__dict__``)?
_pydantic_types: dict[type, bool] = {}


def get(obj: Any, key: str) -> Any:
    """``obj[key]`` for a mapping, ``obj.key`` otherwise; None when absent (SDK objects
    and their ``model_dump()`` dicts read the same way).

    Written for the capture's hot path (measured per read): a pydantic model's field is
    taken from its ``__dict__`` (or its extra fields), never by ``getattr`` of an absent
    name, which costs pydantic 3.5 us in building an AttributeError; whether a type is
    pydantic is remembered per type; ``isinstance(obj, Mapping)``, an ABC check, comes
    last."""
    if obj is None:
        return None
    cls = type(obj)
    if cls is dict:
        return obj.get(key)
    pydantic = _pydantic_types.get(cls)
    if pydantic is None:
        pydantic = _pydantic_types[cls] = (
            getattr(cls, "__pydantic_fields__", None) is not None and hasattr(obj, "__dict__"))
    if pydantic:
        value = obj.__dict__.get(key, _MISSING)
        if value is not _MISSING:
            return value
        extra = obj.__pydantic_extra__
        return extra.get(key) if extra else None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def count(field: str, value: Any) -> int:
    """A token count from a response: None (not reported) is 0; anything but a
    non-negative int raises, naming ``field``."""
    if type(value) is int and value >= 0:
        return value
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return int(value)


def response_id(response: Any) -> str | None:
    value = get(response, "id")
    return value if isinstance(value, str) and value else None


def model_of(response: Any, provider: str) -> str:
    model = get(response, "model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{provider} response has no model name: model={model!r}")
    return model


def record_to(target: Any, fields: dict[str, Any]) -> str:
    """Record ``fields`` (make_usage_record keywords) with ``target``'s own API; returns
    the record id (see :func:`recorder_for`)."""
    return recorder_for(target)(fields)


def recorder_for(target: Any) -> Callable[[dict[str, Any]], str]:
    """A function recording a dict of ``make_usage_record`` keywords with ``target``:

    - :class:`~usageledger.meter.Meter`, :class:`~usageledger.tracker.UsageTracker`, or any
      object with a ``record(**fields)`` method: ``target.record(**fields)``;
    - :class:`~usageledger.delivery.PersistentDelivery`: the record built and validated by
      ``make_usage_record`` (which gives the id and timestamp), enqueued in its typed shape
      (``provider``, ``model``, the token counts as fields), which the collector stores as
      it is.

    Resolved once, so a capture wrapper pays no type tests per call. Told apart by what
    they offer (a ``record`` method first, else ``enqueue``), so integrations need not
    import the facades that sit above them."""
    record = getattr(target, "record", None)
    if callable(record):
        return lambda fields: record(**fields)
    enqueue = getattr(target, "enqueue", None)
    if callable(enqueue):

        def to_delivery(fields: dict[str, Any]) -> str:
            return enqueue(msgspec.to_builtins(make_usage_record(**fields)))

        return to_delivery
    raise TypeError(
        "target must be a Meter, UsageTracker or PersistentDelivery (any object with a "
        f"record(**fields) or an enqueue(dict) method), got {type(target).__name__}"
    )


def track_item(fields: dict[str, Any]) -> dict[str, Any]:
    """The older ``/track`` item (``api_id``/``service_key``/``payload``) for ``fields``, validated now by make_usage_record
    (a bad value raises in the caller's thread, not at the collector)."""
    rec = make_usage_record(**fields)
    payload: dict[str, Any] = dict(rec.payload or {})
    for name in TOKEN_FIELDS:
        payload[name] = getattr(rec, name)
    item: dict[str, Any] = {
        "id": rec.id,
        "api_id": rec.provider,
        "service_key": rec.model,
        "timestamp": rec.timestamp.isoformat(),
        "payload": payload,
    }
    for name in ("user_id", "session_id", "customer_key", "run_id", "response_id", "service_tier"):
        value = getattr(rec, name)
        if value is not None:
            item[name] = value
    for name in DETAIL_TOKEN_FIELDS:  # the collector reads these beside the older shape
        if getattr(rec, name):
            item[name] = getattr(rec, name)
    if rec.cost is not None:
        item["cost"] = str(rec.cost)
        item["currency"] = rec.currency
    if rec.tags:
        item["tags"] = rec.tags
    return item
