"""The shared backend of the state store (``zturbo.server.store``): jobs, events, cancels, images, history
in Redis, so a job submitted through one ingress is watched, cancelled and fetched through
any other.

Keys live under ``zturbo:state:v1:`` (versioned like the cache tier's) and hold JSON text
or raw PNG bytes, never pickles:

- ``job:{id}`` hash (status, request, times, error, owner); ``jobimages:{id}`` list;
- ``events:{id}`` stream (one JSON event per entry; previews stay on the owning ingress);
- ``cancel:{id}`` the reason a client asked to cancel (any ingress); the owner polls it;
- ``png:{id}`` the image bytes; ``image:{id}`` its history row; ``images`` zset by time
  (the newest ``MAX_ROWS`` are kept); ``full:{digest}`` the newest full run of a request;
- ``owners`` zset owner -> lease end; ``owned:{owner}`` the owner's unfinished jobs.

Nothing here may be evicted: a finished job's record and PNG gone while its history row
stays would list images that answer 404. The state Redis (``state_redis_url``, else
``redis_url``) must run with ``maxmemory-policy noeviction``; ``check_no_eviction`` refuses
any other policy at start-up. (The cache tier is the opposite: give it its own Redis with
an evicting policy, e.g. ``allkeys-lru``.)

A finished job's record, events and images expire after ``redis_ttl_s``. An ingress that
stops renewing its lease (``state_lease_s``) is dead: any ingress marks its unfinished
jobs ``error`` (``expire_owners``). Redis down: every call raises StoreUnavailable within
the socket timeout (the server answers 503), never hangs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from zturbo.caches.redis_tier import _safe_url
from zturbo.errors import ZTurboError
from zturbo.hashing import digest
from zturbo.server.store.base import TERMINAL, SharedStore, StoreUnavailable

T = TypeVar("T")
PREFIX = "zturbo:state:v1:"
MAX_ROWS = 10_000  # history rows kept in the shared index (oldest dropped first)
MAX_EVENTS = 100_000  # a stream's cap (a bound, not a limit a real job reaches)
NO_EVICTION = "noeviction"  # the one maxmemory-policy the state Redis may have
BLOCK_S = 1.0  # longest wait of one events() read: followers re-check between waits
JOB_FIELDS = ("status", "request", "created", "started", "finished", "error", "owner")
# HSET the fields (ARGV after the 3 terminal statuses) unless the job is unknown or ended;
# returns its owner when written
UPDATE_UNLESS_ENDED = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == ARGV[1] or current == ARGV[2] or current == ARGV[3] then
  return false
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return redis.call('HGET', KEYS[1], 'owner')
"""


class RedisStore(SharedStore):
    """One ingress's handle on the shared state; ``owner`` names this ingress (its lease)."""

    def __init__(self, url: str, *, ttl_s: int, timeout_s: float, lease_s: float,
                 prefix: str = PREFIX) -> None:
        if ttl_s <= 0 or timeout_s <= 0 or lease_s <= 0:
            raise ZTurboError("redis_ttl_s, redis_timeout_s and state_lease_s must be positive")
        self.url, self.ttl_s, self.lease_s, self.prefix = _safe_url(url), ttl_s, lease_s, prefix
        self.owner = uuid.uuid4().hex
        try:  # no client retries: a dead Redis is one bounded timeout, then a 503
            options = {"socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)}
            self._r = redis.Redis.from_url(url, socket_timeout=timeout_s, **options)
            self._blocking = redis.Redis.from_url(url, socket_timeout=timeout_s + BLOCK_S,
                                                  **options)
        except ValueError as exc:
            raise ZTurboError(f"invalid redis_url {self.url!r}: {exc}") from None
        self._update = self._r.register_script(UPDATE_UNLESS_ENDED)

    def close(self) -> None:
        self._r.close()
        self._blocking.close()

    def check_no_eviction(self) -> None:
        """Refuse a Redis that may evict keys (ZTurboError naming its policy); read from
        ``INFO memory``, which managed Redis services answer where CONFIG is disabled."""
        policy = self._call(lambda r: r.info("memory")).get("maxmemory_policy")
        if policy not in (None, NO_EVICTION):
            raise ZTurboError(
                f"the state Redis at {self.url} evicts keys (maxmemory-policy {policy}): "
                "finished jobs and their images could vanish while their history rows stay. "
                f"Give the state a Redis with maxmemory-policy {NO_EVICTION} (setting "
                "state_redis_url; the cache tier keeps redis_url), see docs/scaleout.md")

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _call(self, fn: Callable[[redis.Redis], T], client: redis.Redis | None = None) -> T:
        try:
            return fn(client or self._r)
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"the shared state store (Redis at {self.url}) does not "
                                   f"answer ({type(exc).__name__}): retry") from None

    # -- jobs ------------------------------------------------------------------------------
    def add_job(self, job_id: str, request: dict[str, Any], created: float) -> None:
        def add(r: redis.Redis) -> None:
            pipe = r.pipeline()
            pipe.hset(self._k("job", job_id), mapping={
                "status": "queued", "request": json.dumps(request), "created": repr(created),
                "owner": self.owner})
            pipe.sadd(self._k("owned", self.owner), job_id)
            pipe.zadd(self._k("owners"), {self.owner: time.time() + self.lease_s})
            pipe.execute()

        self._call(add)

    def set_job(self, job_id: str, status: str, *, started: float | None = None,
                finished: float | None = None, error: str | None = None) -> None:
        """Update a job; a terminal status is final (checked and written atomically, so a
        late owner cannot revive a job whose lease expired)."""
        fields = {"status": status, **{k: repr(v) for k, v in
                                       (("started", started), ("finished", finished))
                                       if v is not None},
                  **({"error": error} if error is not None else {})}
        flat = [item for pair in fields.items() for item in pair]
        key = self._k("job", job_id)

        def update(r: redis.Redis) -> None:
            owner = self._update(keys=[key], args=[*TERMINAL, *flat], client=r)
            if owner and status in TERMINAL:
                pipe = r.pipeline()
                pipe.srem(self._k("owned", owner.decode()), job_id)
                for name in (key, self._k("events", job_id), self._k("jobimages", job_id)):
                    pipe.expire(name, self.ttl_s)
                pipe.execute()

        self._call(update)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The record as the local backend gives it (plus ``owner``); None when unknown."""
        def read(r: redis.Redis):
            pipe = r.pipeline()
            pipe.hmget(self._k("job", job_id), *JOB_FIELDS)
            pipe.lrange(self._k("jobimages", job_id), 0, -1)
            return pipe.execute()

        values, images = self._call(read)
        if values[0] is None:
            return None
        raw = dict(zip(JOB_FIELDS, (v.decode() if v is not None else None for v in values),
                       strict=True))
        return {"id": job_id, "status": raw["status"], "request": json.loads(raw["request"]),
                **{k: float(raw[k]) if raw[k] else None for k in ("created", "started",
                                                                  "finished")},
                "error": raw["error"], "owner": raw["owner"],
                "images": [i.decode() for i in images]}

    def interrupt_unfinished(self, reason: str = "the server stopped before it finished") -> int:
        """This ingress stops: end its unfinished jobs and drop its lease; end dead owners'."""
        ended = self._end_owner(self.owner, reason)
        return ended + self.expire_owners()

    # -- live: events, cancel, leases --------------------------------------------------------
    def add_event(self, job_id: str, event: dict[str, Any]) -> None:
        data = {**event, "data": {k: v for k, v in event["data"].items() if k != "preview"}}
        self._call(lambda r: r.xadd(self._k("events", job_id), {"e": json.dumps(data)},
                                    maxlen=MAX_EVENTS, approximate=True))

    def events(self, job_id: str, after: str = "0-0", wait_s: float = 0.0
               ) -> list[tuple[str, dict[str, Any]]]:
        """Events after stream id ``after`` as (id, event), waiting up to ``wait_s`` (at
        most BLOCK_S) for the first; [] when none came."""
        block = int(min(wait_s, BLOCK_S) * 1000)
        key = self._k("events", job_id)
        got = self._call(lambda r: r.xread({key: after}, block=block or None), self._blocking)
        return [(sid.decode(), json.loads(fields[b"e"]))
                for _, entries in got or [] for sid, fields in entries]

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Ask the owner to cancel (False: unknown or already ended)."""
        record = self.job(job_id)
        if record is None or record["status"] in TERMINAL:
            return False
        self._call(lambda r: r.set(self._k("cancel", job_id), reason, ex=self.ttl_s))
        return True

    def cancel_reasons(self, job_ids: list[str]) -> dict[str, str]:
        """The cancel requests among ``job_ids`` (the owner polls its active jobs)."""
        if not job_ids:
            return {}
        values = self._call(lambda r: r.mget([self._k("cancel", j) for j in job_ids]))
        return {j: v.decode() for j, v in zip(job_ids, values, strict=True) if v is not None}

    def probe(self) -> None:
        """A small real write: StoreUnavailable while Redis does not take writes."""
        self._call(lambda r: r.set(self._k("probe"), repr(time.time()), ex=60))

    def heartbeat(self) -> None:
        """Renew this ingress's lease on its jobs."""
        self._call(lambda r: r.zadd(self._k("owners"), {self.owner: time.time() + self.lease_s}))

    def expire_owners(self) -> int:
        """End (``error``) the unfinished jobs of every owner whose lease ran out."""
        dead = self._call(lambda r: r.zrangebyscore(self._k("owners"), "-inf", time.time()))
        return sum(self._end_owner(owner.decode(), "the ingress running this job stopped "
                                   "(its lease expired): retry the request") for owner in dead)

    def _end_owner(self, owner: str, reason: str) -> int:
        """Claim ``owner`` (one ingress wins the ZREM) and end its unfinished jobs."""
        if not self._call(lambda r: r.zrem(self._k("owners"), owner)) and owner != self.owner:
            return 0
        ended = 0
        for raw in self._call(lambda r: r.smembers(self._k("owned", owner))):
            job_id = raw.decode()
            record = self.job(job_id)
            if record is None or record["status"] in TERMINAL:
                continue
            self.set_job(job_id, "error", finished=time.time(), error=reason)
            self.add_event(job_id, {"event": "error", "data": {
                "id": job_id, "message": reason, "timeout": False}})
            ended += 1
        self._call(lambda r: r.delete(self._k("owned", owner)))
        return ended

    # -- images and history ------------------------------------------------------------------
    def put_png(self, image_id: str, data: bytes) -> None:
        self._call(lambda r: r.set(self._k("png", image_id), bytes(data), ex=self.ttl_s))

    def png(self, image_id: str) -> bytes | None:
        return self._call(lambda r: r.get(self._k("png", image_id)))

    def image_file(self, image_id: str) -> None:
        """No file: the image is only in Redis (``png``)."""
        return None

    def file_of(self, row: dict[str, Any]) -> None:
        """No file: the image is only in Redis (``png``)."""
        return None

    def add_image(self, row: dict[str, Any]) -> None:
        """One image's history row (and, for a full run, the request's newest full run)."""
        image_id, created = row["id"], row["created"]

        def add(r: redis.Redis) -> None:
            pipe = r.pipeline()
            pipe.set(self._k("image", image_id), json.dumps(row))
            pipe.zadd(self._k("images"), {image_id: created})
            pipe.rpush(self._k("jobimages", row["job_id"]), image_id)
            if not (row.get("teleport") or {}).get("hit") and "total" in row["timings"]:
                pipe.set(self._k("full", _run_key(row["request"], row["fingerprint"])),
                         json.dumps({"image_id": image_id, "job_id": row["job_id"],
                                     "created": created, "total": row["timings"]["total"]}),
                         ex=self.ttl_s)
            pipe.execute()
            self._trim(r)

        self._call(add)

    def _trim(self, r: redis.Redis) -> None:
        """Keep the newest MAX_ROWS rows (the oldest rows go, with their index entries)."""
        extra = r.zcard(self._k("images")) - MAX_ROWS
        if extra > 0:
            old = r.zrange(self._k("images"), 0, extra - 1)
            r.delete(*[self._k("image", i.decode()) for i in old])
            r.zrem(self._k("images"), *old)

    def image(self, image_id: str) -> dict[str, Any] | None:
        rows = self._rows([image_id])
        return rows[0] if rows else None

    def images(self, *, query: str = "", limit: int = 24, offset: int = 0
               ) -> tuple[list[dict[str, Any]], int]:
        """A page of rows, newest first, whose prompt contains ``query`` (any case)."""
        ids = [i.decode() for i in self._call(lambda r: r.zrevrange(self._k("images"), 0, -1))]
        if query:
            needle = query.casefold()
            rows = [row for row in self._rows(ids) if needle in row["prompt"].casefold()]
            return rows[offset:offset + limit], len(rows)
        return self._rows(ids[offset:offset + limit]), len(ids)

    def _rows(self, ids: list[str]) -> list[dict[str, Any]]:
        """Rows by id (gone ones skipped), each with ``job_images`` as the local backend."""
        if not ids:
            return []
        raw = self._call(lambda r: r.mget([self._k("image", i) for i in ids]))
        rows = [json.loads(v) for v in raw if v is not None]

        def counts(r: redis.Redis) -> list[int]:
            pipe = r.pipeline(transaction=False)
            for row in rows:
                pipe.llen(self._k("jobimages", row["job_id"]))
            return pipe.execute()

        for row, n in zip(rows, self._call(counts) if rows else [], strict=True):
            row["job_images"] = n
        return rows


    def full_run(self, request: dict[str, Any], fingerprint: str, before: float
                 ) -> dict[str, Any] | None:
        """The newest full run of exactly ``request`` on this model made before ``before``."""
        raw = self._call(lambda r: r.get(self._k("full", _run_key(request, fingerprint))))
        if raw is None:
            return None
        run = json.loads(raw)
        if run["created"] >= before:
            return None
        n = self._call(lambda r: r.llen(self._k("jobimages", run["job_id"])))
        return {"image_id": run["image_id"], "job_id": run["job_id"], "created": run["created"],
                "seconds": round(run["total"] / max(n, 1), 6)}


def _run_key(request: dict[str, Any], fingerprint: str) -> str:
    return digest({"request": request, "fingerprint": fingerprint})
