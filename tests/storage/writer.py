"""A writer process for the concurrent-writer tests:

    python -m tests.storage.writer URL SEED START_AT

waits until the wall clock reaches START_AT (so every writer starts together), writes all
of :func:`dataset` with ``save_many`` in its own shuffled order and batch sizes, and prints
the ids it stored as new, as a JSON list.
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from usageledger.records import UsageRecord
from usageledger.storage import create_storage

T0 = datetime(2025, 5, 30, 18, tzinfo=UTC)


def dataset(n: int = 6000) -> list[UsageRecord]:
    """The same records in every process: users, customers, sessions and tags (some
    absent), two currencies, some unknown costs, over five days."""
    rnd = random.Random(20)
    out = []
    for i in range(n):
        tags = {}
        if rnd.random() < 0.7:
            tags["env"] = rnd.choice(["prod", "dev", "staging"])
        if rnd.random() < 0.3:
            tags["team"] = f"t{rnd.randrange(4)}"
        out.append(UsageRecord(
            f"rec-{i:06d}", T0 + timedelta(seconds=rnd.randrange(5 * 86400)), "openai",
            f"m{rnd.randrange(3)}", rnd.randrange(5000), rnd.randrange(500), rnd.randrange(100),
            0, 0,
            None if rnd.random() < 0.1 else Decimal(rnd.randrange(1, 10**7)).scaleb(-9),
            "EUR" if rnd.random() < 0.2 else "USD",
            None if rnd.random() < 0.15 else f"u{rnd.randrange(40)}",
            None if rnd.random() < 0.3 else f"s{rnd.randrange(600)}",
            None if rnd.random() < 0.4 else f"c{rnd.randrange(6)}",
            tags=tags,
        ))
    return out


def main() -> None:
    url, seed, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rnd = random.Random(seed)
    records = dataset()
    rnd.shuffle(records)
    store = create_storage(url)
    time.sleep(max(0.0, start_at - time.time()))
    new: list[str] = []
    i = 0
    while i < len(records):
        size = rnd.choice((1, 10, 100, 250, 1000))
        new += store.save_many(records[i:i + size])
        i += size
    store.close()
    print(json.dumps(new))


if __name__ == "__main__":
    main()
