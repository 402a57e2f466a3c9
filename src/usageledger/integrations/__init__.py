"""Integrations with provider SDKs and OpenTelemetry (DESIGN sections 6 and 9).

Each submodule is imported on its own and imports no SDK at import time:

- :mod:`.genai`: the one mapping between a :class:`~usageledger.records.UsageRecord` and
  the OpenTelemetry GenAI attribute names;
- :mod:`.openai`: usage of OpenAI Chat Completions / Responses objects (or dicts);
- :mod:`.anthropic`: usage of Anthropic Messages objects (or dicts);
- :mod:`.otel`: :class:`~.otel.OtelMetricsSink`, a pipeline sink that records the
  ``gen_ai.client.token.usage`` histogram (needs the ``otel`` extra).
"""
