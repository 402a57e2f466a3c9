"""Redis store: ``redis.asyncio`` over a connection pool (extra ``usageledger[redis]``).

Every Redis error that means "cannot talk to the server" (refused, reset, timed out) is
raised as :class:`KVUnavailableError` naming ``host:port``; each call is one command, one
MULTI/EXEC transaction or one Lua script, so a failure never leaves half a write behind.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import redis.asyncio as aredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .base import MISSING, TTL, KVError, KVStore, KVTypeError, KVUnavailableError, check_members

__all__ = ["RedisKVStore"]

# ttl applies only when INCRBY creates the key (same rule as the other stores)
_INCR_LUA = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""

# ARGV: absent-flag, expected, new, px ('' = no expiry)
_CAS_LUA = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then redis.call('SET', KEYS[1], ARGV[3])
else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end
return 1
"""

# ARGV: px ('' = keep the expiry), members...; SADD in chunks (Lua's unpack has a stack limit)
_SADD_LUA = """
local added = 0
for i = 2, #ARGV, 5000 do
  added = added + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 4999, #ARGV)))
end
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return added
"""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_CHUNK = 5000


def _px(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


class RedisKVStore(KVStore):
    kind = "redis"

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        *,
        url: str | None = None,
        max_connections: int = 50,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retries: int = 2,
        **kw: Any,
    ):
        super().__init__(**kw)
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # a few quick retries ride over a blip; a dead server fails within ~connect_timeout
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        }
        # a blocking pool: a burst of tasks beyond max_connections waits for a free
        # connection (up to socket_timeout) instead of failing with "Too many connections"
        options["timeout"] = socket_timeout
        if url is not None:
            self._pool = aredis.BlockingConnectionPool.from_url(url, **options)
        else:
            self._pool = aredis.BlockingConnectionPool(
                host=host, port=port, db=db, password=password, **options
            )
        ck = self._pool.connection_kwargs
        self.host, self.port, self.db = ck.get("host", host), ck.get("port", port), ck.get("db", db)
        self.address = f"{self.host}:{self.port}"
        self._r = aredis.Redis(connection_pool=self._pool)
        self._incr_script = self._r.register_script(_INCR_LUA)
        self._cas_script = self._r.register_script(_CAS_LUA)
        self._sadd_script = self._r.register_script(_SADD_LUA)

    def __repr__(self) -> str:
        return f"<RedisKVStore {self.address}/{self.db} prefix={self.key_prefix!r}>"

    @contextlib.asynccontextmanager
    async def _errors(self, key: str | None = None) -> AsyncIterator[None]:
        try:
            yield
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise KVUnavailableError(
                f"Redis at {self.address} (db {self.db}) is unreachable: {exc}"
            ) from exc
        except rexc.ResponseError as exc:
            text = str(exc)
            if "WRONGTYPE" in text:
                raise KVTypeError(f"key {key!r} holds the wrong kind of value: {text}") from None
            if "not an integer" in text or "overflow" in text:
                raise KVTypeError(f"key {key!r} does not hold an integer; incr() needs one") from None
            raise KVError(f"Redis at {self.address}: {text}") from exc
        except rexc.RedisError as exc:
            raise KVError(f"Redis at {self.address}: {exc}") from exc

    # -- contract -------------------------------------------------------------------------
    async def get(self, key: str, default: Any = None) -> Any:
        full = self._k(key)
        async with self._errors(key):
            raw = await self._r.get(full)
        return default if raw is None else self.codec.decode(raw, key)

    async def set(self, key: str, value: Any, ttl: TTL = None) -> None:
        full, data, seconds = self._k(key), self.codec.encode(value, key), self._ttl(ttl)
        async with self._errors(key):
            await self._r.set(full, data, px=None if seconds is None else _px(seconds))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        fulls = [self._k(k) for k in keys]
        async with self._errors():
            return await self._r.delete(*fulls)

    async def exists(self, key: str) -> bool:
        full = self._k(key)
        async with self._errors(key):
            return bool(await self._r.exists(full))

    async def incr(self, key: str, amount: int = 1, ttl: TTL = None) -> int:
        if type(amount) is not int:
            raise TypeError(f"amount={amount!r} must be an int")
        full, seconds = self._k(key), self._ttl(ttl)
        async with self._errors(key):
            if seconds is None:
                return await self._r.incrby(full, amount)
            return await self._incr_script(keys=[full], args=[amount, _px(seconds)])

    async def _scan(self, prefix_full: str) -> list[str]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix_full) + "*"
        found: set[str] = set()
        async with self._errors():
            async for raw in self._r.scan_iter(match=pattern, count=1000):
                k = raw.decode("utf-8", "surrogateescape")
                if k.startswith(prefix_full):  # the MATCH already did; belt and braces
                    found.add(k)
        return sorted(found)

    async def keys(self, prefix: str = "") -> list[str]:
        return [self._strip(k) for k in await self._scan(self._k(prefix))]

    async def mget(self, keys: Iterable[str]) -> dict[str, Any]:
        names = list(keys)
        if not names:
            return {}
        async with self._errors():
            raws = await self._r.mget([self._k(k) for k in names])
        return {k: self.codec.decode(raw, k) for k, raw in zip(names, raws, strict=True) if raw is not None}

    async def mset(self, mapping: Mapping[str, Any], ttl: TTL = None) -> None:
        if not mapping:
            return
        data = {self._k(k): self.codec.encode(v, k) for k, v in mapping.items()}
        seconds = self._ttl(ttl)
        async with self._errors():
            if seconds is None:
                await self._r.mset(data)
                return
            px = _px(seconds)
            async with self._r.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all or none
                for full, value in data.items():
                    pipe.set(full, value, px=px)
                await pipe.execute()

    async def expire(self, key: str, ttl: TTL) -> bool:
        full, seconds = self._k(key), self._ttl(ttl)
        async with self._errors(key):
            if seconds is None:
                return bool(await self._r.exists(full)) and (await self._r.persist(full) or True)
            return bool(await self._r.pexpire(full, _px(seconds)))

    async def ttl(self, key: str) -> float | None:
        full = self._k(key)
        async with self._errors(key):
            ms = await self._r.pttl(full)
        return None if ms < 0 else ms / 1000.0

    async def compare_and_set(self, key: str, expected: Any, new: Any, ttl: TTL = None) -> bool:
        full, seconds = self._k(key), self._ttl(ttl)
        absent = expected is MISSING
        args = [
            "1" if absent else "0",
            b"" if absent else self.codec.encode(expected, key),
            self.codec.encode(new, key),
            "" if seconds is None else _px(seconds),
        ]
        async with self._errors(key):
            return bool(await self._cas_script(keys=[full], args=args))

    async def sadd(self, key: str, *members: str, ttl: TTL = None) -> int:
        full, seconds, items = self._k(key), self._ttl(ttl), check_members(members)
        if not items:
            return 0
        async with self._errors(key):
            if seconds is None and len(items) <= _CHUNK:
                return await self._r.sadd(full, *items)
            # one script: a WRONGTYPE error stops it before PEXPIRE, where a MULTI would
            # still have run the PEXPIRE on the other kind of value
            px = "" if seconds is None else _px(seconds)
            return await self._sadd_script(keys=[full], args=[px, *items])

    async def srem(self, key: str, *members: str) -> int:
        full, items = self._k(key), check_members(members)
        if not items:
            return 0
        async with self._errors(key):
            return await self._r.srem(full, *items)

    async def smembers(self, key: str) -> set[str]:
        full = self._k(key)
        async with self._errors(key):
            raws = await self._r.smembers(full)
        return {m.decode("utf-8") for m in raws}

    async def scard(self, key: str) -> int:
        full = self._k(key)
        async with self._errors(key):
            return await self._r.scard(full)

    async def sismember(self, key: str, member: str) -> bool:
        full = self._k(key)
        check_members([member])
        async with self._errors(key):
            return bool(await self._r.sismember(full, member))

    async def clear(self) -> int:
        fulls = await self._scan(self.key_prefix)
        deleted = 0
        async with self._errors():
            for i in range(0, len(fulls), 1000):
                deleted += await self._r.delete(*fulls[i:i + 1000])
        return deleted

    async def ping(self) -> None:
        async with self._errors():
            await self._r.ping()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._r.aclose()
        with contextlib.suppress(Exception):
            await self._pool.disconnect()
