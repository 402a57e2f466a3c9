"""Redis storage: records in one hash, sorted-set indexes for every filter, exact money.

Layout under ``prefix`` (default ``usageledger:``):

- ``records``: hash id -> record JSON (cost as a decimal string);
- ``ts``: sorted set of every id scored by its timestamp (UTC microseconds, exact in a
  double until the year 2255); ``i:<field>:<value>`` the same per provider, model,
  user_id, session_id and customer_key, and ``t:<len>:<key>=<value>`` per tag. A query
  intersects the sets its filters name and reads one score range of the result, newest
  first (ties by id descending), so no filter scans every record;
- ``roll:<metric>`` and ``roll_day:<metric>``: hashes of totals per (hour or day, provider,
  model, currency), so aggregates by day/hour/provider/model read a few thousand fields at most;
  cost in integer nano-units (``HINCRBY``: exact). Costs finer than a nano-unit are
  counted in ``roll:inexact`` and make those aggregates sum the records' own decimal
  strings instead;
- ``run:<run_id>``: hash of the run's fields (each a JSON value) plus ``seq``; ``runs``: the
  set of run ids;
- ``prices`` and ``price_aliases``: the collector's price overrides and aliases
  (:class:`~usageledger.storage._prices.RedisPrices`), kept by ``clear()`` (configuration,
  not usage).

Saving is one Lua script per batch: ``HSETNX`` on the records hash decides, atomically with
the index and rollup updates, whether an id is new — a second copy changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgspec

from ..schema.records import UsageRecord, decode_usage, encode
from ..schema.totals import PART_SUMS
from ._prices import RedisPrices
from .aggregate import (
    Aggregate,
    Aggregator,
    cost_nano,
    finish_groups,
    nano_to_decimal,
    rollup_fits,
    zero_totals,
)
from .base import RunStore, RunWrite, StorageBackend
from .filters import _US_PER_DAY, _US_PER_HOUR, Filters, day_key, hour_key, make_filters, ts_us
from .runs import page_runs, run_fields

__all__ = ["RedisStorage"]

_METRICS = ("count", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost_nano", "unknown_cost", "inexact", *PART_SUMS)

# KEYS: records, ts, registry, roll:<metric> x 14 (per hour), roll_day:<metric> x 14 (per
# day). ARGV[1]: a msgpack array with per record
# [id, score, json, hour group, it, ot, cr, cw, rt, nano|"", unknown, inexact, [index keys],
#  day group, cw1h, audio in, audio out, image in, image out].
# Per group the sums are {count, it, ot, cr, cw, rt, unknown, inexact, nano, the 5 parts};
# metric m of _METRICS is KEYS[base + m]. A store written before the parts has no hash for
# them: they read as 0, which is what its records carried.
# One msgpack argument per batch (no string escapes to undo, unlike JSON): packing millions
# of separate arguments costs redis-py more than the script costs Redis. Scores and cost
# stay strings: a Lua double would round them.
_SAVE = """
local batch = cmsgpack.unpack(ARGV[1])
local dup = {}
local NM = (#KEYS - 3) / 2
local levels = {{base = 3, col = 4, acc = {}}, {base = 3 + NM, col = 14, acc = {}}}
local z = {}
local function index(key, score, id)
  local t = z[key]
  if not t then t = {}; z[key] = t end
  t[#t + 1] = score
  t[#t + 1] = id
end
for _, r in ipairs(batch) do
  local id, score = r[1], r[2]
  if redis.call('HSETNX', KEYS[1], id, r[3]) == 1 then
    index(KEYS[2], score, id)
    for _, key in ipairs(r[13]) do index(key, score, id) end
    local nano = r[10]
    for _, level in ipairs(levels) do
      local g = r[level.col]
      local a = level.acc[g]
      if not a then a = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}; level.acc[g] = a end
      a[1] = a[1] + 1
      for m = 1, 5 do a[m + 1] = a[m + 1] + r[4 + m] end
      for m = 10, 14 do a[m] = a[m] + r[m + 5] end
      a[7] = a[7] + r[11]
      a[8] = a[8] + r[12]
      if nano ~= '' and nano ~= '0' then
        -- a double holds integers exactly below 2^53: sum short values here, hand the
        -- rest (and any sum nearing the limit) to HINCRBY, which is exact in 64 bits
        if #nano <= 15 and a[9] < 4e15 then
          a[9] = a[9] + tonumber(nano)
        else
          redis.call('HINCRBY', KEYS[level.base + 7], g, nano)
        end
      end
    end
  else
    dup[#dup + 1] = id
  end
end
-- one ZADD per index key and batch (in slices: unpack has a stack limit)
for key, t in pairs(z) do
  for i = 1, #t, 7000 do
    redis.call('ZADD', key, unpack(t, i, math.min(i + 6999, #t)))
  end
  if key ~= KEYS[2] then redis.call('SADD', KEYS[3], key) end
end
for _, level in ipairs(levels) do
  local b = level.base
  for g, a in pairs(level.acc) do
    for m = 1, 6 do redis.call('HINCRBY', KEYS[b + m], g, string.format('%d', a[m])) end
    if a[9] > 0 then redis.call('HINCRBY', KEYS[b + 7], g, string.format('%d', a[9])) end
    if a[7] > 0 then redis.call('HINCRBY', KEYS[b + 8], g, string.format('%d', a[7])) end
    if a[8] > 0 then redis.call('HINCRBY', KEYS[b + 9], g, string.format('%d', a[8])) end
    for m = 10, 14 do
      if a[m] > 0 then redis.call('HINCRBY', KEYS[b + m], g, string.format('%d', a[m])) end
    end
  end
end
return dup
"""

# KEYS: the index sets to intersect, then a scratch key. ARGV: min, max, offset, count.
_QUERY = """
local n = #KEYS - 1
local key = KEYS[1]
if n > 1 then
  local args = {KEYS[#KEYS], n}
  for j = 1, n do args[#args + 1] = KEYS[j] end
  args[#args + 1] = 'AGGREGATE'
  args[#args + 1] = 'MAX'
  redis.call('ZINTERSTORE', unpack(args))
  key = KEYS[#KEYS]
end
local ids = redis.call('ZREVRANGEBYSCORE', key, ARGV[2], ARGV[1], 'LIMIT', ARGV[3], ARGV[4])
if n > 1 then redis.call('DEL', key) end
return ids
"""

# KEYS[1]: the runs set. ARGV per write: run key, run_id, seq, create(0/1), nfields, k, v...
_RUNS = """
local out = {}
local i = 1
while i <= #ARGV do
  local key, run_id, seq, create, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], tonumber(ARGV[i + 4])
  local cur = redis.call('HGET', key, 'seq')
  local apply = false
  if not cur then
    if create == '1' then out[#out + 1] = 'created'; apply = true
    else out[#out + 1] = 'missing' end
  elseif seq <= tonumber(cur) then
    if create == '1' then out[#out + 1] = 'duplicate' else out[#out + 1] = 'stale' end
  else
    out[#out + 1] = 'updated'; apply = true
  end
  if apply then
    redis.call('HSET', key, 'seq', ARGV[i + 2])
    for j = 0, n - 1 do
      redis.call('HSET', key, ARGV[i + 5 + 2 * j], ARGV[i + 6 + 2 * j])
    end
    redis.call('SADD', KEYS[1], run_id)
  end
  i = i + 5 + 2 * n
end
return out
"""

_json_decode = msgspec.json.decode
_pack = msgspec.msgpack.encode


class RedisStorage(RedisPrices, RunStore, StorageBackend):
    """``RedisStorage(url, prefix="usageledger:")``; thread-safe (redis-py's pool)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "usageledger:",
                 **client_kw: Any):
        try:
            import redis
        except ImportError:
            raise ImportError("the redis backend needs redis-py: pip install 'usageledger[redis]'") from None
        self.url = url
        self.prefix = prefix
        self._r = redis.Redis.from_url(url, **client_kw)
        self._save_script = self._r.register_script(_SAVE)
        self._query_script = self._r.register_script(_QUERY)
        self._runs_script = self._r.register_script(_RUNS)
        p = prefix
        self._k_records, self._k_ts, self._k_registry = f"{p}records", f"{p}ts", f"{p}indexes"
        self._k_roll = [f"{p}roll:{m}" for m in _METRICS]
        self._k_roll_day = [f"{p}roll_day:{m}" for m in _METRICS]
        self._k_runs = f"{p}runs"

    def _index(self, field: str, value: str) -> str:
        return f"{self.prefix}i:{field}:{value}"

    def _tag_index(self, key: str, value: str) -> str:
        # the length makes "a=b"="c" and "a"="b=c" different keys
        return f"{self.prefix}t:{len(key)}:{key}={value}"

    # -- writes -----------------------------------------------------------------------------
    def save_many(self, records: Iterable[UsageRecord], *, chunk: int = 5000) -> set[str]:
        new: set[str] = set()
        batch: list[list[Any]] = []
        keys = [self._k_records, self._k_ts, self._k_registry, *self._k_roll, *self._k_roll_day]
        p = self.prefix
        seen: set[str] = set()

        def run(batch: list[list[Any]]) -> None:
            dup = {x.decode() for x in self._save_script(keys=keys, args=[_pack(batch)])}
            new.update(r[0] for r in batch if r[0] not in dup)

        for rec in records:
            if not isinstance(rec, UsageRecord):
                raise TypeError(f"save_many takes UsageRecord objects, got {rec!r}")
            if rec.id in seen:
                continue
            seen.add(rec.id)
            us = ts_us(rec.timestamp)
            nano = cost_nano(rec.cost)
            idx = [f"{p}i:provider:{rec.provider}", f"{p}i:model:{rec.model}"]
            if rec.user_id is not None:
                idx.append(f"{p}i:user_id:{rec.user_id}")
            if rec.session_id is not None:
                idx.append(f"{p}i:session_id:{rec.session_id}")
            if rec.customer_key is not None:
                idx.append(f"{p}i:customer_key:{rec.customer_key}")
            if rec.tags:
                idx += [self._tag_index(k, v) for k, v in rec.tags.items()]
            batch.append([
                rec.id, str(us), encode(rec).decode(),
                encode([us // _US_PER_HOUR, rec.provider, rec.model, rec.currency]).decode(),
                rec.input_tokens, rec.output_tokens, rec.cache_read_tokens,
                rec.cache_write_tokens, rec.reasoning_tokens, "" if nano is None else str(nano),
                1 if rec.cost is None else 0, 1 if rec.cost is not None and nano is None else 0,
                idx, encode([us // _US_PER_DAY, rec.provider, rec.model, rec.currency]).decode(),
                *[getattr(rec, k) for k in PART_SUMS],
            ])
            if len(batch) == chunk:
                run(batch)
                batch = []
        if batch:
            run(batch)
        return new

    # -- reads ------------------------------------------------------------------------------
    def _index_keys(self, f: Filters) -> list[str]:
        keys = [self._index(k, v) for k, v in f.equalities()]
        keys += [self._tag_index(k, v) for k, v in f.tags]
        return keys or [self._k_ts]

    def _ids(self, f: Filters, offset: int = 0, limit: int | None = None) -> list[bytes]:
        scratch = f"{self.prefix}tmp:{uuid.uuid4().hex}"
        low = "-inf" if f.since is None else f.since
        high = "+inf" if f.until is None else f"({f.until}"
        return self._query_script(
            keys=[*self._index_keys(f), scratch],
            args=[low, high, offset, -1 if limit is None else limit],
        )

    def _fetch(self, ids: list[bytes], chunk: int = 10000) -> Iterable[UsageRecord]:
        for i in range(0, len(ids), chunk):
            for data in self._r.hmget(self._k_records, ids[i:i + chunk]):
                if data is not None:  # cleared between the two calls
                    yield decode_usage(data)

    def _query(self, f: Filters, limit: int | None, offset: int) -> list[UsageRecord]:
        if limit == 0:
            return []
        return list(self._fetch(self._ids(f, offset, limit)))

    def iter_records(self, batch_size: int = 5000, **filters: Any) -> Iterator[UsageRecord]:
        """The matching ids once (one intersection), then the records in chunks."""
        yield from self._fetch(self._ids(make_filters(**filters)), chunk=batch_size)

    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        if rollup_fits(keys, f):
            groups = self._aggregate_rollup(keys, f)
            if groups is not None:
                return finish_groups(keys, groups)
        agg = Aggregator(keys)
        for rec in self._fetch(self._ids(f)):
            agg.add(rec, ts_us(rec.timestamp))
        return agg.rows()

    def _aggregate_rollup(self, keys: tuple[str, ...], f: Filters) -> dict | None:
        # the per-day rollup has 24 times fewer fields: use it when hours are not needed
        daily = "hour" not in keys and all(
            t is None or t % _US_PER_DAY == 0 for t in (f.since, f.until))
        unit = _US_PER_DAY if daily else _US_PER_HOUR
        pipe = self._r.pipeline(transaction=True)
        for k in self._k_roll_day if daily else self._k_roll:
            pipe.hgetall(k)
        hashes = dict(zip(_METRICS, pipe.execute(), strict=True))
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        lo = None if f.since is None else f.since // unit
        hi = None if f.until is None else f.until // unit
        for raw, count in hashes["count"].items():
            group = _json_decode(raw)
            if len(group) != 4:
                return None  # a field written before rollups were keyed by currency: scan
            bucket, provider, model, currency = group
            if (lo is not None and bucket < lo) or (hi is not None and bucket >= hi):
                continue
            if (f.provider is not None and provider != f.provider) or (
                f.model is not None and model != f.model
            ):
                continue
            if int(hashes["inexact"].get(raw, 0)):
                return None  # a cost finer than a nano-unit: sum the records' own strings
            values = {"provider": provider, "model": model, "currency": currency, "day": day_key(bucket * unit),
                      "hour": None if daily else hour_key(bucket * unit)}
            gk = tuple(values[k] for k in keys)
            t = groups.setdefault(gk, zero_totals())
            t["count"] += int(count)
            for m in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                      "reasoning_tokens", "unknown_cost", *PART_SUMS):
                t[m] += int(hashes[m].get(raw, 0))
            t["cost"] += nano_to_decimal(int(hashes["cost_nano"].get(raw, 0)))
        return groups

    def count(self) -> int:
        return self._r.hlen(self._k_records)

    # -- runs -------------------------------------------------------------------------------
    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        args: list[Any] = []
        for w in writes:
            fields = run_fields(w)
            args += [f"{self.prefix}run:{w.run_id}", w.run_id, w.seq, 1 if w.create else 0,
                     len(fields)]
            for k, v in fields.items():
                args += [f"f:{k}", encode(v)]
        if not writes:
            return []
        return [x.decode() for x in self._runs_script(keys=[self._k_runs], args=args)]

    @staticmethod
    def _run_from(run_id: str, raw: dict[bytes, bytes]) -> dict[str, Any] | None:
        if not raw:
            return None
        run = {k[2:].decode(): _json_decode(v) for k, v in raw.items() if k.startswith(b"f:")}
        run["run_id"] = run_id
        run["seq"] = int(raw[b"seq"])
        return run

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._run_from(run_id, self._r.hgetall(f"{self.prefix}run:{run_id}"))

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        run_ids = sorted(x.decode() for x in self._r.smembers(self._k_runs))
        pipe = self._r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(f"{self.prefix}run:{run_id}")
        runs = [
            r for run_id, raw in zip(run_ids, pipe.execute(), strict=True)
            if (r := self._run_from(run_id, raw)) is not None
        ]
        return page_runs(runs, agent_name, status, limit, offset)

    def clear(self) -> None:
        indexes = list(self._r.smembers(self._k_registry))
        runs = [f"{self.prefix}run:{x.decode()}" for x in self._r.smembers(self._k_runs)]
        keys = [self._k_records, self._k_ts, self._k_registry, self._k_runs, *self._k_roll,
                *self._k_roll_day,
                *indexes, *runs]
        for i in range(0, len(keys), 1000):
            self._r.unlink(*keys[i:i + 1000])

    def close(self) -> None:
        self._r.close()


