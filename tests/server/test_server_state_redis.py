"""Server state that cannot be evicted: the shared state store refuses a Redis whose
maxmemory-policy may evict keys (finished job records and PNGs would vanish while history
rows stay), and the state can live on its own Redis (``state_redis_url``) beside an
evicting cache Redis. Real redis-servers (caches/localredis.py)."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from zturbo.errors import ZTurboError
from zturbo.server.store import open_store
from zturbo.server.store.redis_store import PREFIX

from conftest import run_cli
from localredis import LocalRedis
from serverkit import SMALL, app_for, one_thread, settings

JOB = {"prompt": "a red robot", "seed": 4, **SMALL, "teleport": False}
EVICTING = {"maxmemory": "64mb", "maxmemory-policy": "volatile-lru"}


@pytest.fixture
def lru(tmp_path):
    """A Redis configured as a cache: it evicts keys with a TTL when full."""
    with LocalRedis(tmp_path / "lru", config=EVICTING) as server:
        yield server


def test_an_evicting_state_redis_is_refused_at_start_up(lru, tmp_path, engine):
    flags = {"state_backend": "redis", "redis_url": lru.url}
    with pytest.raises(ZTurboError, match="maxmemory-policy volatile-lru") as refused:
        open_store(settings(**flags), tmp_path / "h.sqlite3", tmp_path)
    assert "noeviction" in str(refused.value) and "state_redis_url" in str(refused.value)
    with pytest.raises(ZTurboError, match="evicts keys"):
        with TestClient(app_for(engine, **flags)):
            pass
    out = run_cli("serve", "--model", "demo", "--port", "0",
                  env={"ZTURBO_STATE_BACKEND": "redis", "ZTURBO_REDIS_URL": lru.url})
    assert out.returncode == 2, out
    assert "evicts keys" in out.stderr and "Traceback" not in out.stderr


def test_state_on_its_own_redis_beside_an_evicting_cache(lru, server, engine):
    """The cache Redis evicts (volatile-lru); the state Redis (noeviction) holds the jobs."""
    app = app_for(engine, state_backend="redis", redis_url=lru.url, state_redis_url=server.url)
    with one_thread(), TestClient(app) as c:
        r = c.post("/api/generate", json=JOB)
        assert r.status_code == 200, r.text
        job_id, image_id = r.headers["x-zturbo-job-id"], r.headers["x-zturbo-image-id"]
        state, cache = redis.Redis.from_url(server.url), redis.Redis.from_url(lru.url)
        assert state.exists(f"{PREFIX}job:{job_id}", f"{PREFIX}png:{image_id}") == 2
        assert not list(cache.scan_iter(match=f"{PREFIX}*"))
        assert c.get(f"/api/images/{image_id}").content == r.content
