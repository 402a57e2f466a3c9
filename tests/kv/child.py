"""Child processes for the multi-process tests:

    python -m tests.kv.child save  OPTIONS_JSON   # save state, print SAVED, keep writing until killed
    python -m tests.kv.child load  OPTIONS_JSON   # print what a fresh process finds, as JSON
    python -m tests.kv.child race  OPTIONS_JSON N  # claim retries on N items, print grants as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys

from usageledger.kv import (
    create_persistence_manager,
    create_retry_manager,
    create_state_tracker,
    create_store,
)

ITEMS = [f"https://example.com/item/{i}" for i in range(5000)]
BATCH = 50


async def save(options: dict) -> None:
    store = create_store(**options)
    pm = await create_persistence_manager("job", store=store)
    tracker = await create_state_tracker("job-stats", store=store)
    await pm.save_processed_items(ITEMS)
    await pm.save_state({"cursor": "abc123", "page": 17, "done": False})
    await pm.save_error("item-9", "Connection timeout", 2)
    for _ in range(25):
        await tracker.increment_counter("api_calls")
    await tracker.record_processing_time("fetch", 0.25)
    await tracker.record_processing_time("fetch", 1.75)
    print("SAVED", flush=True)
    # keep rewriting one batch of keys until SIGKILL lands mid-stream: every mset is all-or-none
    generation = 0
    while True:
        generation += 1
        await store.mset({f"batch:{i}": generation for i in range(BATCH)})


async def load(options: dict) -> None:
    store = create_store(**options)
    pm = await create_persistence_manager("job", store=store)
    tracker = await create_state_tracker("job-stats", store=store)
    batch = await store.mget([f"batch:{i}" for i in range(BATCH)])
    out = {
        "processed": sorted(await pm.load_processed_items()),
        "state": await pm.load_state(),
        "failed": [e["item_id"] for e in await pm.get_failed_items(max_retries=3)],
        "api_calls": await tracker.get_counter("api_calls"),
        "fetch": await tracker.get_processing_stats("fetch"),
        "batch_generations": sorted(set(batch.values())),
        "batch_size": len(batch),
    }
    await store.close()
    print(json.dumps(out), flush=True)


async def race(options: dict, n_items: int) -> None:
    store = create_store(**options)
    rm = await create_retry_manager(max_retries=3, store=store)
    # start together so that the two workers really interleave
    await store.incr("ready")
    while await store.get("ready") < 2:
        await asyncio.sleep(0.005)
    granted: list[list] = []
    for i in range(n_items):
        item = f"item-{i}"
        while await rm.should_retry(item):
            attempt = await rm.claim_retry(item, "boom")
            if attempt is not None:
                granted.append([item, attempt])
    await store.close()
    print(json.dumps(granted), flush=True)


if __name__ == "__main__":
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    if mode == "save":
        asyncio.run(save(options))
    elif mode == "load":
        asyncio.run(load(options))
    else:
        asyncio.run(race(options, int(sys.argv[3])))
