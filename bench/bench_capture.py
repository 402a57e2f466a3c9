"""Capture overhead (usageledger.instrument). Run by hand:
`.venv/bin/python bench/bench_capture.py [--quick]`.

1. the wrapper alone: ``Completions.create`` wrapped around a stand-in that returns a
   ready ``ChatCompletion`` (no HTTP), so what is timed is only what instrument() adds:
   attributes, request preparation, usage extraction, record building and the target's
   ``record()``; baseline: the stand-in called directly;
2. a stream: per chunk, our observer around the SDK's iterator vs the iterator alone;
3. end to end with the real ``openai`` SDK against the local fake server
   (tests/support/fake_llm_server.py): the same call unpatched and patched, interleaved
   in rounds so that load drifts hit both alike.

Every figure is printed with its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openai import OpenAI  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

import usageledger  # noqa: E402
from tests.support.fake_llm_server import CHAT_USAGE, FakeLLMServer  # noqa: E402
from usageledger.integrations import _capture_openai  # noqa: E402
from usageledger.integrations.capture import Call, Plan, observe  # noqa: E402
from usageledger.meter import Meter  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]
ROWS: list[str] = []


def row(label: str, value: str, baseline: str = "", ratio: str = "") -> None:
    line = f"| {label} | {value} | {baseline} | {ratio} |"
    ROWS.append(line)
    print(line, flush=True)


def per_call_ns(fn, batch: int, batches: int) -> float:
    """ns per call: the fastest of ``batches`` batches of ``batch`` calls. On a shared
    machine (2 cores, load 8 to 11 while this was measured) a batch that was preempted is
    slower, never faster, so the fastest batch is the figure least hurt by the others."""
    return min(timeit.repeat(fn, number=batch, repeat=batches)) / batch * 1e9


class NullTarget:
    """A target whose record() does nothing: isolates our code from the target's."""

    def record(self, **fields):
        return "id"


COMPLETION = ChatCompletion.model_validate({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hi"}}],
    "usage": CHAT_USAGE})


class Resource:
    _client = None  # not an Azure client


def wrapper_alone(batches: int) -> None:
    def stand_in(self, **kwargs):
        return COMPLETION

    wrapped = _capture_openai._wrap_sync(stand_in, "chat", None)
    resource = Resource()
    direct = per_call_ns(lambda: stand_in(resource, model="gpt-4o", messages=MESSAGES), 100,
                         batches)
    for label, target in (("null target", NullTarget()), ("Meter (memory)", Meter())):
        handle = usageledger.instrument(target, providers=["openai"])
        try:
            with usageledger.attributes(user_id="u1", tags={"feature": "chat"}):
                ns = per_call_ns(lambda: wrapped(resource, model="gpt-4o", messages=MESSAGES),
                                 100, batches)
        finally:
            handle.uninstrument()
            if isinstance(target, Meter):
                target.close(30)
        row(f"wrapper alone, chat create, {label}: added per call",
            f"{(ns - direct) / 1000:.2f} us", f"{direct / 1000:.2f} us (stand-in)",
            f"{ns / max(direct, 1):.1f}x of the stand-in")


def stream_per_chunk(n_chunks: int) -> None:
    chunk = ChatCompletionChunk.model_validate({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]})
    chunks = [chunk] * n_chunks
    pc = time.perf_counter_ns

    def run(observed: bool) -> float:
        best = float("inf")
        for _ in range(30):  # the fastest of 30 passes: the least preempted one
            if observed:
                call = Call(Plan((), (), True), {}, "openai", "chat", stream=True)
                it = observe(iter(chunks), _capture_openai.ChatStreamUsage(call, True))
            else:
                it = iter(chunks)
            t = pc()
            for _c in it:
                pass
            best = min(best, (pc() - t) / n_chunks)
        return best

    plain, seen = run(False), run(True)
    row("stream, per chunk: observer added", f"{(seen - plain):.0f} ns",
        f"{plain:.0f} ns (the bare iterator)", "")


def end_to_end(rounds: int, per_round: int, target_name: str) -> None:
    """The real SDK and HTTP on loopback: medians of calls interleaved in rounds. With the
    null target this is the wrapper's cost; with a Meter its pipeline threads also take
    the GIL from the calling thread now and then."""
    target = NullTarget() if target_name == "null target" else Meter()
    with FakeLLMServer() as server:
        client = OpenAI(base_url=server.openai_url, api_key="k", max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # warm up
        for stream in (False, True):
            plain: list[int] = []
            patched: list[int] = []
            def once(out: list[int], stream: bool = stream) -> None:
                t = time.perf_counter_ns()
                if stream:
                    for _c in client.chat.completions.create(model="gpt-4o",
                                                             messages=MESSAGES, stream=True):
                        pass
                else:
                    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
                out.append(time.perf_counter_ns() - t)

            for _ in range(rounds):
                for _ in range(per_round):
                    once(plain)
                handle = usageledger.instrument(target, providers=["openai"])
                for _ in range(per_round):
                    once(patched)
                handle.uninstrument()
            p, q = statistics.median(plain), statistics.median(patched)
            kind = "stream=True" if stream else "non-stream"
            row(f"end to end, chat create {kind}, {target_name}: median per call",
                f"{q / 1000:.0f} us patched", f"{p / 1000:.0f} us unpatched",
                f"{q / p:.3f}x (difference {((q - p) / 1000):+.0f} us)")
        client.close()
    if isinstance(target, Meter):
        target.close(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print("| measure | value | baseline | ratio |")
    print("|---|---|---|---|")
    wrapper_alone(batches=300 if args.quick else 2_000)
    stream_per_chunk(2_000 if args.quick else 20_000)
    for target in ("null target", "Meter (memory)"):
        end_to_end(rounds=5 if args.quick else 10, per_round=40 if args.quick else 100,
                   target_name=target)


if __name__ == "__main__":
    main()
