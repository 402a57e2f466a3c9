"""Integrations with provider SDKs, LiteLLM and OpenTelemetry.

Each submodule is imported on its own, and none imports an SDK at import time:

- :mod:`.capture`: ``usageledger.instrument(target)`` / ``uninstrument()``, the automatic
  capture of every OpenAI, Anthropic and LiteLLM call (SDKs patched when imported);
- :mod:`.context`: ``usageledger.attributes(user_id=, customer_key=, session_id=, tags=)``;
- :mod:`.openai`: usage of OpenAI Chat Completions / Responses / Embeddings objects (or dicts);
- :mod:`.anthropic`: usage of Anthropic Messages objects (or dicts);
- :mod:`.litellm`: a LiteLLM callback recording with any target;
- :mod:`.genai`: the one mapping between a :class:`~usageledger.records.UsageRecord` and
  the OpenTelemetry GenAI attribute names;
- :mod:`.otel`: :class:`~.otel.OtelMetricsSink`, a pipeline sink that records the
  ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` histograms, and
  :class:`~.otel.UsageSpanProcessor`, GenAI spans into records (needs the ``otel`` extra).
"""
