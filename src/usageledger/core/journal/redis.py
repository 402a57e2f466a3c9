"""Redis Streams journal: ``redis://host:port/db?stream=NAME`` (extra ``usageledger[redis]``).

For producers on many hosts, or on containers whose disk does not outlive them: every
process appends to one stream, one dispatcher at a time (the lease) claims from it.

Layout, for a stream named ``S`` (one consumer group, ``usageledger``):

- ``S``: the stream. An item is an entry ``id, kind, data, created`` (plus ``attempts``
  and ``last_error`` once it failed a delivery). Ready items are the entries not yet
  read by the group, plus those parked with the consumer ``~ready``; in-flight items are
  the entries pending for a dispatcher (read with ``XREADGROUP``, not yet acknowledged).
- ``S:due``: a sorted set of retried items by ``not_before``; a claim moves those due
  back onto the stream.
- ``S:dead``: a second stream of dead letters (with ``last_error`` and ``died``).
- ``S:counters`` (delivered, retried) and ``S:lease`` (holder, expires): hashes.

Every state change is one Lua script or one MULTI/EXEC, so a connection lost midway
never leaves an item in two states or in none. ``ack`` is ``XACK`` + ``XDEL``: a stream
holds only what is still to deliver. A dispatcher that dies leaves its entries pending;
the next holder of the lease (once it expired) moves them to ``~ready`` with
``XAUTOCLAIM`` and sends only those again (the collector drops the copies by id).

Durability: ``append`` returns once Redis acknowledged the ``MULTI``/``EXEC`` of the
batch. What survives a Redis crash then depends on the server's persistence:
``appendonly yes`` + ``appendfsync always`` for what ``committed`` promises on a local
journal; ``fsync=True`` refuses to open on a server configured otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import DEAD, INFLIGHT, Journal, JournalError, JournalItem, state_code

__all__ = ["RedisJournal", "parse_journal_url"]

log = logging.getLogger("usageledger.journal")

GROUP = "usageledger"
#: the consumer holding entries that went back to ready (their dispatcher's lease ended)
PARKED = "~ready"
DEFAULT_STREAM = "usageledger"
_CHUNK = 1000  # ids per script call: Lua's unpack() has a stack limit of ~8000

# a retried or dead item travels to a script as its fields in one string, each
# "<length>:<bytes>" (binary safe; the server's cmsgpack cannot read msgpack bin types)
_SPLIT = """
local function split(m)
  local out, i = {}, 1
  while i <= #m do
    local c = string.find(m, ':', i, true)
    local n = tonumber(string.sub(m, i, c - 1))
    out[#out + 1] = string.sub(m, c + 1, c + n)
    i = c + n + 1
  end
  return out
end
"""


def _pack(flat: list[bytes]) -> bytes:
    return b"".join(b"%d:%s" % (len(x), x) for x in flat)


def _unpack(packed: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(packed):
        c = packed.index(b":", i)
        n = int(packed[i:c])
        out.append(packed[c + 1:c + 1 + n])
        i = c + 1 + n
    return out


# KEYS: stream, due; ARGV: group, owner, n, now, parked
_CLAIM = _SPLIT + """
local S, due = KEYS[1], KEYS[2]
local g, owner, n, now, parked = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
for _, m in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, n)) do
  redis.call('XADD', S, '*', unpack(split(m)))
  redis.call('ZREM', due, m)
end
local out = {}
local waiting = redis.call('XPENDING', S, g, '-', '+', n, parked)
if #waiting > 0 then
  local ids, seen = {}, {}
  for i, p in ipairs(waiting) do ids[i] = p[1]; seen[p[1]] = p[4] end
  for _, e in ipairs(redis.call('XCLAIM', S, g, owner, 0, unpack(ids))) do
    if e and e[2] then out[#out + 1] = {e[1], e[2], seen[e[1]] + 1} end
  end
end
if #out < n then
  local r = redis.call('XREADGROUP', 'GROUP', g, owner, 'COUNT', n - #out, 'STREAMS', S, '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      if e[2] then out[#out + 1] = {e[1], e[2], 1} end
    end
  end
end
return out
"""

# KEYS: stream, counters; ARGV: group, entry ids... One XACK and one XDEL for the batch:
# an entry acknowledged elsewhere already is deleted already, XDEL then does nothing
_ACK = """
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
if n > 0 then redis.call('HINCRBY', KEYS[2], 'delivered', n) end
return n
"""

# KEYS: stream, due, counters; ARGV: group, not_before, then pairs (entry id, packed fields)
_RETRY = """
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[3], 'retried', n) end
return n
"""

# KEYS: stream, dead; ARGV: group, then pairs (entry id, packed dead-letter fields)
_DEAD = _SPLIT + """
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('XADD', KEYS[2], '*', unpack(split(ARGV[i + 1])))
    n = n + 1
  end
end
return n
"""

# fields of a flat XINFO CONSUMERS row
_CONSUMERS = """
local function consumers(S, g)
  local out = {}
  for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', S, g)) do
    local c = {}
    for i = 1, #row, 2 do c[row[i]] = row[i + 1] end
    out[#out + 1] = c
  end
  return out
end
local function move(S, g, to, ids)
  -- JUSTID: a move is not a delivery (the delivery count stays)
  for i = 1, #ids, 1000 do
    local args = {'XCLAIM', S, g, to, 0}
    for j = i, math.min(i + 999, #ids) do args[#args + 1] = ids[j] end
    args[#args + 1] = 'JUSTID'
    redis.call(unpack(args))
  end
end
local function pending_of(S, g, c)
  local ids = {}
  if c.pending > 0 then
    for _, p in ipairs(redis.call('XPENDING', S, g, '-', '+', c.pending, c.name)) do
      ids[#ids + 1] = p[1]
    end
  end
  return ids
end
"""

# KEYS: stream, lease; ARGV: group, holder, now, expires, parked
_ACQUIRE = _CONSUMERS + """
local S, L = KEYS[1], KEYS[2]
local g, holder, now, parked = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local h = redis.call('HMGET', L, 'holder', 'expires')
if h[1] and h[1] ~= holder and tonumber(h[2]) > now then return 0 end
if h[1] ~= holder then
  -- taking over: whatever another dispatcher left pending is ready again; this
  -- holder's own claims (it may still be sending them) stay with it
  local mine = {}
  for _, c in ipairs(consumers(S, g)) do
    if c.name == holder then mine = pending_of(S, g, c) end
  end
  local start, moved = '0-0', 0
  repeat
    local r = redis.call('XAUTOCLAIM', S, g, parked, 0, start, 'COUNT', 1000, 'JUSTID')
    start = r[1]
    moved = moved + #r[2]
  until start == '0-0'
  move(S, g, holder, mine)
  for _, c in ipairs(consumers(S, g)) do
    if c.name ~= holder and c.name ~= parked then redis.call('XGROUP', 'DELCONSUMER', S, g, c.name) end
  end
  redis.call('HSET', L, 'holder', holder, 'expires', ARGV[4])
  return {1, moved - #mine, h[1] or ''}
end
redis.call('HSET', L, 'holder', holder, 'expires', ARGV[4])
return 1
"""

# KEYS: stream, lease; ARGV: group, holder, parked
_RELEASE = _CONSUMERS + """
local S, L, g, holder = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
for _, c in ipairs(consumers(S, g)) do
  if c.name == holder then
    move(S, g, ARGV[3], pending_of(S, g, c))
    redis.call('XGROUP', 'DELCONSUMER', S, g, holder)
  end
end
if redis.call('HGET', L, 'holder') == holder then redis.call('DEL', L) end
return 1
"""


def parse_journal_url(url: str) -> tuple[str, str]:
    """``(redis URL without the journal's own parameters, stream name)``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    stream = [v for k, v in query if k == "stream"]
    if stream and not stream[-1]:
        raise ValueError(f"journal URL {url!r}: stream= names no stream")
    rest = urlencode([(k, v) for k, v in query if k != "stream"])
    return urlunsplit(parts._replace(query=rest)), (stream[-1] if stream else DEFAULT_STREAM)


def _fields(flat: list[bytes] | dict[bytes, bytes]) -> dict[bytes, bytes]:
    """An entry's fields: redis-py parses XRANGE replies into a dict, a script's reply or
    a packed retry is a flat [field, value, ...] list."""
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


class RedisJournal(Journal):
    """``RedisJournal("redis://host:6379/0?stream=NAME", fsync=False)``.

    Safe from any thread and any number of processes on any number of hosts. Opening
    never fails because the server is down: every call then raises
    :class:`~usageledger.journal.JournalError`, so the recorder moves on to its fallback
    journal and comes back once Redis answers again.
    """

    def __init__(self, url: str, *, fsync: bool = False, timeout: float = 5.0):
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ImportError(
                "the Redis journal needs redis-py: pip install 'usageledger[redis]'"
            ) from None
        self._errors = redis.RedisError
        self._response_error = redis.ResponseError
        server, self.stream = parse_journal_url(url)
        parts = urlsplit(server)
        where = parts.hostname or parts.path or "localhost"
        self.location = f"{parts.scheme}://{where}{':' + str(parts.port) if parts.port else ''}{parts.path if parts.hostname else ''}?stream={self.stream}"
        self.fsync = fsync
        # one quick retry on a dropped connection; a server that is down fails fast so the
        # recorder falls back to its local journal instead of blocking the caller
        self._redis = redis.Redis.from_url(
            server, socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0),
            retry=Retry(NoBackoff(), 0),  # a blind retry could run a claim twice
        )
        s = self.stream
        self._due, self._dead, self._counters, self._lease = (
            f"{s}:due", f"{s}:dead", f"{s}:counters", f"{s}:lease")
        self._claim = self._redis.register_script(_CLAIM)
        self._ack = self._redis.register_script(_ACK)
        self._retry = self._redis.register_script(_RETRY)
        self._dead_script = self._redis.register_script(_DEAD)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        # what this process claimed: id -> [(entry id, fields)] (ack/retry/dead by entry id)
        self._claims: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        self._claims_lock = threading.Lock()
        # settlements (ack/retry/dead) Redis did not confirm: replayed before the next claim,
        # else their entries would stay in flight for this live dispatcher
        self._unsettled: list[tuple[Any, list[str], list[Any]]] = []
        # a claim whose reply was lost (connection dropped after Redis ran it) left entries
        # pending for this owner that it does not know: found and made ready before the next
        self._lost_claim = False
        self._settle_lock = threading.RLock()
        self._ready = False
        try:
            self._setup()
        except JournalError as exc:
            if fsync:
                raise
            log.error("Redis journal %s is not reachable yet (%s); will keep trying", self.location, exc)

    # -- plumbing -------------------------------------------------------------------------
    def _setup(self) -> None:
        try:
            self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except self._response_error as exc:
            if "BUSYGROUP" not in str(exc):
                raise JournalError(f"journal {self.location}: {exc}") from exc
        except self._errors as exc:
            raise JournalError(f"journal {self.location}: {exc}") from exc
        if self.fsync:
            self._check_fsync()
        self._ready = True

    def _check_fsync(self) -> None:
        try:
            conf = self._redis.config_get("append*")
        except self._errors as exc:
            raise JournalError(
                f"durability='fsync' on the Redis journal {self.location} needs to read the "
                f"server's appendonly/appendfsync settings, and CONFIG GET failed: {exc}"
            ) from exc
        conf = {_text(k) if isinstance(k, bytes) else k: _text(v) if isinstance(v, bytes) else v
                for k, v in conf.items()}
        if conf.get("appendonly") != "yes" or conf.get("appendfsync") != "always":
            raise JournalError(
                f"durability='fsync' on the Redis journal {self.location} needs the server to "
                f"run with appendonly yes and appendfsync always (it has appendonly="
                f"{conf.get('appendonly')}, appendfsync={conf.get('appendfsync')}): only then is "
                "an append on disk when Redis acknowledges it"
            )

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run ``fn``; Redis errors become JournalError, and a stream or group that vanished
        (FLUSHDB, a deleted key) is created again once."""
        for attempt in (1, 2):
            try:
                if not self._ready:
                    self._setup()
                return fn(*args, **kw)
            except self._response_error as exc:
                if "NOGROUP" in str(exc) and attempt == 1:
                    self._ready = False
                    continue
                raise JournalError(f"journal {self.location}: {exc}") from exc
            except self._errors as exc:
                raise JournalError(f"journal {self.location}: {exc}") from exc
        raise AssertionError("unreachable")

    # -- contract -------------------------------------------------------------------------
    def append(self, items: list[tuple[str, str, bytes]]) -> None:
        if not items:
            return
        created = f"{time.time():.6f}"

        def run() -> None:
            # MULTI/EXEC: the batch is stored whole or not at all, in one round trip
            pipe = self._redis.pipeline(transaction=True)
            for id_, kind, data in items:
                pipe.xadd(self.stream, {"id": id_, "kind": kind, "data": data, "created": created})
            pipe.execute()

        self._call(run)

    def _settle(self, script: Any, keys: list[str], args: list[Any]) -> None:
        # under the settle lock: recovering from a lost claim reply must not see an entry
        # taken from the claims map whose settlement is still on its way
        try:
            self._call(script, keys=keys, args=args)
        except JournalError:
            with self._claims_lock:
                self._unsettled.append((script, keys, args))
            self._lost_claim = True  # the dispatcher drops the rest of this batch
            raise

    def _recover(self, owner: str) -> None:
        """After Redis failed a claim or a settlement: the dispatcher gave up settling the
        rest of that batch, and a claim whose reply was lost left entries nobody here
        knows. Every entry pending for ``owner`` goes back to ready (a send still under
        way may then deliver its records twice: the collector keeps one copy by id)."""
        with self._settle_lock:
            def run() -> int:
                lost = [p["message_id"] for p in self._redis.xpending_range(
                    self.stream, GROUP, min="-", max="+", count=100_000, consumername=owner)]
                if lost:
                    self._redis.xclaim(self.stream, GROUP, PARKED, 0, lost, justid=True)
                return len(lost)

            lost = self._call(run)
            with self._claims_lock:
                self._claims.clear()
            self._lost_claim = False
            if lost:
                log.warning("journal %s: %d claimed items whose settlement failed are ready again",
                            self.location, lost)

    def _replay(self) -> None:
        with self._claims_lock:
            todo, self._unsettled = self._unsettled, []
        while todo:
            script, keys, args = todo[0]
            try:
                self._call(script, keys=keys, args=args)
            except JournalError:
                with self._claims_lock:
                    self._unsettled[:0] = todo
                raise
            todo.pop(0)

    def claim(self, n: int, owner: str) -> list[JournalItem]:
        if self._unsettled:
            self._replay()
        if self._lost_claim:
            self._recover(owner)
        try:
            rows = self._call(self._claim, keys=[self.stream, self._due],
                              args=[GROUP, owner, n, f"{time.time():.6f}", PARKED])
        except JournalError:
            self._lost_claim = True  # Redis may have run it: look for its entries next time
            raise
        out = []
        with self._claims_lock:
            for eid, flat, seen in rows:
                f = _fields(flat)
                id_ = f[b"id"].decode()
                self._claims.setdefault(id_, []).append((eid, f))
                out.append(JournalItem(id_, f[b"kind"].decode(), f[b"data"],
                                       int(f.get(b"attempts", 0)) + int(seen)))
        return out

    def _take(self, ids: list[str]) -> list[tuple[bytes, dict[bytes, bytes]]]:
        out = []
        with self._claims_lock:
            for id_ in ids:
                out.extend(self._claims.pop(id_, ()))
        return out

    def _chunks(self, taken: list[Any]) -> list[list[Any]]:
        return [taken[i:i + _CHUNK] for i in range(0, len(taken), _CHUNK)]

    def ack(self, ids: list[str]) -> None:
        with self._settle_lock:
            for part in self._chunks(self._take(ids)):
                self._settle(self._ack, [self.stream, self._counters],
                             [GROUP, *(eid for eid, _ in part)])

    def retry(self, ids: list[str], error: str, not_before: float) -> None:
        with self._settle_lock:
            self._retry_locked(ids, error, not_before)

    def _retry_locked(self, ids: list[str], error: str, not_before: float) -> None:
        for part in self._chunks(self._take(ids)):
            args: list[Any] = [GROUP, f"{not_before:.6f}"]
            for eid, f in part:
                attempts = int(f.get(b"attempts", 0)) + 1
                again = {**f, b"attempts": str(attempts).encode(), b"last_error": error.encode(),
                         b"not_before": f"{not_before:.6f}".encode()}
                args += [eid, _pack([x for kv in again.items() for x in kv])]
            self._settle(self._retry, [self.stream, self._due, self._counters], args)

    def dead(self, ids: list[str], error: str) -> None:
        with self._settle_lock:
            self._dead_locked(ids, error)

    def _dead_locked(self, ids: list[str], error: str) -> None:
        died = f"{time.time():.6f}"
        for part in self._chunks(self._take(ids)):
            args: list[Any] = [GROUP]
            for eid, f in part:
                letter = {b"id": f[b"id"], b"kind": f[b"kind"], b"data": f[b"data"],
                          b"attempts": str(int(f.get(b"attempts", 0)) + 1).encode(),
                          b"created": f[b"created"], b"last_error": error.encode(),
                          b"died": died.encode()}
                args += [eid, _pack([x for kv in letter.items() for x in kv])]
            self._settle(self._dead_script, [self.stream, self._dead], args)

    def requeue(self, ids: list[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)

        def run() -> int:
            moved = 0
            for eid, flat in self._redis.xrange(self._dead):
                f = _fields(flat)
                if wanted is not None and f[b"id"].decode() not in wanted:
                    continue
                pipe = self._redis.pipeline(transaction=True)
                pipe.xadd(self.stream, {k: f[k] for k in (b"id", b"kind", b"data", b"created")})
                pipe.xdel(self._dead, eid)
                pipe.execute()
                moved += 1
            return moved

        return self._call(run)

    def purge(self, state: str | int, older_than: float | None = None) -> int:
        code = state_code(state)

        def old(row: dict[str, Any]) -> bool:
            return older_than is None or row["created"] < older_than

        def run() -> int:
            if code == DEAD:
                gone = [r["_entry"] for r in self._dead_rows() if old(r)]
                return self._redis.xdel(self._dead, *gone) if gone else 0
            rows = [r for r in self._state_rows(code) if old(r)]
            pipe = self._redis.pipeline(transaction=True)
            for r in rows:
                if r["_entry"] is None:
                    pipe.zrem(self._due, r["_member"])
                else:
                    pipe.xack(self.stream, GROUP, r["_entry"])
                    pipe.xdel(self.stream, r["_entry"])
            pipe.execute()
            return len(rows)

        return self._call(run)

    # -- inspection -----------------------------------------------------------------------
    def _row(self, entry: bytes | None, f: dict[bytes, bytes], owner: str | None = None) -> dict[str, Any]:
        return {
            "id": f[b"id"].decode(), "kind": f[b"kind"].decode(), "data": f[b"data"],
            "attempts": int(f.get(b"attempts", 0)), "created": float(f[b"created"]),
            "not_before": float(f.get(b"not_before", 0)), "last_error": _text(f.get(b"last_error")),
            "owner": owner, "_entry": entry,
        }

    def _pending(self) -> list[tuple[bytes, str]]:
        """(entry id, consumer) of every entry read by the group and not acknowledged."""
        out = []
        start = "-"
        while True:
            page = self._redis.xpending_range(self.stream, GROUP, min=start, max="+", count=10_000)
            out += [(p["message_id"], _text(p["consumer"])) for p in page]
            if len(page) < 10_000:
                return out
            start = "(" + page[-1]["message_id"].decode()

    def _entries(self, ids: list[bytes]) -> dict[bytes, dict[bytes, bytes]]:
        pipe = self._redis.pipeline(transaction=False)
        for eid in ids:
            pipe.xrange(self.stream, eid, eid)
        return {got[0][0]: _fields(got[0][1]) for got in pipe.execute() if got}

    def _state_rows(self, code: int, limit: int | None = None) -> list[dict[str, Any]]:
        pending = self._pending()
        if code == INFLIGHT:
            mine = [(e, c) for e, c in pending if c != PARKED][:limit]
            got = self._entries([e for e, _ in mine])
            return [self._row(e, got[e], c) for e, c in mine if e in got]
        parked = [e for e, c in pending if c == PARKED]
        got = self._entries(parked[:limit])
        rows = [self._row(e, got[e]) for e in parked[:limit] if e in got]
        last = self._last_delivered()
        if limit is None or len(rows) < limit:
            for eid, flat in self._redis.xrange(self.stream, min="(" + last, max="+",
                                                count=None if limit is None else limit - len(rows)):
                rows.append(self._row(eid, _fields(flat)))
        for member, score in self._redis.zrange(self._due, 0, -1, withscores=True):
            row = self._row(None, _fields(_unpack(member)))
            row["_member"], row["not_before"] = member, score
            rows.append(row)
        return rows if limit is None else rows[:limit]

    def _last_delivered(self) -> str:
        for g in self._redis.xinfo_groups(self.stream):
            if _text(g["name"]) == GROUP:
                return _text(g["last-delivered-id"])  # type: ignore[return-value]
        return "0-0"

    def _dead_rows(self, newest_first: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        rows = (self._redis.xrevrange(self._dead, count=limit) if newest_first
                else self._redis.xrange(self._dead, count=limit))
        out = []
        for eid, flat in rows:
            f = _fields(flat)
            row = self._row(eid, f)
            row["not_before"], row["died"] = 0.0, float(f[b"died"])
            out.append(row)
        return out

    @staticmethod
    def _public(rows: list[dict[str, Any]], died: bool = False) -> list[dict[str, Any]]:
        keys = ("id", "kind", "data", "attempts", "created", "not_before", "last_error", "owner")
        return [{k: r[k] for k in (*keys, "died") if k in r and (died or k != "died")} for r in rows]

    def items(self, state: str | int, limit: int = 100) -> list[dict[str, Any]]:
        code = state_code(state)
        if code == DEAD:
            return self._public(self._call(self._dead_rows, limit=limit))
        return self._public(self._call(self._state_rows, code, limit))

    def retrying(self, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
        def run() -> tuple[int, list[dict[str, Any]]]:
            n = self._redis.zcard(self._due)
            rows = []
            for member, score in self._redis.zrange(self._due, 0, limit - 1, withscores=True):
                row = self._row(None, _fields(_unpack(member)))
                row["not_before"] = score
                rows.append(row)
            return n, self._public(rows)

        return self._call(run)

    def recent_dead(self, limit: int = 10) -> list[dict[str, Any]]:
        return self._public(self._call(self._dead_rows, True, limit), died=True)

    def has_pending(self) -> bool:
        """As the contract says; also True while the server cannot be reached: the stream
        may hold items, so a flush must not report them settled."""
        def run() -> bool:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(self.stream)
            pipe.zcard(self._due)
            return any(pipe.execute())

        try:
            return self._call(run)
        except JournalError:
            return True

    def stats(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            # one MULTI/EXEC: a snapshot, so an ack between two reads cannot make them disagree
            pipe = self._redis.pipeline(transaction=True)
            pipe.xlen(self.stream)
            pipe.xpending(self.stream, GROUP)
            pipe.xinfo_consumers(self.stream, GROUP)
            pipe.zcard(self._due)
            pipe.zrange(self._due, 0, 0, withscores=True)
            pipe.xlen(self._dead)
            pipe.hgetall(self._counters)
            pipe.hmget(self._lease, "holder", "expires")
            pipe.xinfo_groups(self.stream)
            length, pending, consumers, due, first_due, dead, counters, lease, groups = pipe.execute()
            parked = sum(c["pending"] for c in consumers if _text(c["name"]) == PARKED)
            inflight = pending["pending"] - parked
            oldest = self._oldest_ready(groups, parked, first_due)
            return {
                "ready": length - pending["pending"] + parked + due,
                "inflight": inflight,
                "dead": dead,
                "delivered": int(counters.get(b"delivered", 0)),
                "retried": int(counters.get(b"retried", 0)),
                "oldest_ready_created": oldest,
                "next_not_before": first_due[0][1] if first_due else None,
                "lease_holder": _text(lease[0]),
                "lease_expires": None if lease[1] is None else float(lease[1]),
            }

        return self._call(run)

    def _oldest_ready(self, groups: list[dict], parked: int, first_due: list) -> float | None:
        candidates = []
        if parked:
            page = self._redis.xpending_range(self.stream, GROUP, min="-", max="+", count=1,
                                              consumername=PARKED)
            if page:
                got = self._entries([page[0]["message_id"]])
                candidates += [float(f[b"created"]) for f in got.values()]
        last = next((_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0")
        first = self._redis.xrange(self.stream, min="(" + last, max="+", count=1)
        if first:
            candidates.append(float(_fields(first[0][1])[b"created"]))
        if first_due:
            candidates.append(float(_fields(_unpack(first_due[0][0]))[b"created"]))
        return min(candidates) if candidates else None

    # -- lease ----------------------------------------------------------------------------
    def acquire(self, holder: str, lease_s: float) -> bool:
        now = time.time()
        got = self._call(self._acquire, keys=[self.stream, self._lease],
                         args=[GROUP, holder, f"{now:.6f}", f"{now + lease_s:.6f}", PARKED])
        if isinstance(got, list):
            moved, previous = got[1], _text(got[2])
            if moved:
                log.warning("lease of %s expired: %d in-flight items returned to ready",
                            previous or "a dispatcher", moved)
            return True
        return bool(got)

    def release(self, holder: str) -> None:
        self._call(self._release, keys=[self.stream, self._lease], args=[GROUP, holder, PARKED])
        with self._claims_lock:
            self._claims.clear()

    def close(self) -> None:
        self._redis.close()
