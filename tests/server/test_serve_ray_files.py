"""The shipped deployment files parse and name what the code provides (the Serve config
itself is deployed by tests/e2e/test_serve_ray.py; the KubeRay manifest cannot run here)."""

from pathlib import Path

import pytest
import yaml

from zturbo.config import Settings
from zturbo.errors import ZTurboError
from zturbo.server.ray import Scale, app_builder, check_ingresses

ROOT = Path(__file__).resolve().parents[2]
SCALE_KEYS = {"replicas", "autoscale", "target_ongoing", "max_ongoing", "max_queued",
              "affinity", "model_routing", "model_wait_s", "retry_after_s", "ingresses"}


def _apps(config: dict) -> list[dict]:
    return config["applications"]


def test_kuberay_manifest_embeds_a_serve_config_the_builder_accepts():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    for app in _apps(serve_config) + _apps(shipped):
        assert app["import_path"] == "zturbo.server.ray:app_builder" and callable(app_builder)
        unknown = set(app["args"]) - SCALE_KEYS - set(Settings.model_fields) - {"profile"}
        assert not unknown, unknown
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    # the cache Redis evicts; the state Redis never does (zturbo refuses it otherwise)
    assert "maxmemory-policy allkeys-lru" in conf["cache.conf"] and "maxmemory " in conf["cache.conf"]
    assert "maxmemory-policy noeviction" in conf["state.conf"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name, config in (("zturbo-cache-redis", "cache.conf"), ("zturbo-state-redis", "state.conf")):
        args = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] == f"/etc/redis/{config}" and "--requirepass" in args
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head_env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert "@zturbo-cache-redis:" in head_env["ZTURBO_REDIS_URL"]["value"]
    assert "@zturbo-state-redis:" in head_env["ZTURBO_STATE_REDIS_URL"]["value"]
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert workers["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    worker_env = {e["name"]: e for e in workers["containers"][0]["env"]}
    for env in (head_env, worker_env):  # one cache secret for every replica
        assert env["ZTURBO_CACHE_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "zturbo-cache"


def test_several_ingresses_need_the_shared_state():
    """Ingress replicas on the local backend would each see only their own jobs."""
    with pytest.raises(ZTurboError, match="state_backend: redis"):
        check_ingresses(Settings(), Scale(ingresses=2))
    with pytest.raises(ZTurboError, match="at least 1"):
        check_ingresses(Settings(), Scale(ingresses=0))
    check_ingresses(Settings(state_backend="redis", redis_url="redis://127.0.0.1:1/0"),
                    Scale(ingresses=2))


def test_adapter_sets_route_together_whatever_the_trajectory(engine, tmp_path):
    """Requests with the same LoRA adapter set share a routing id (the replica that has the
    set loaded), whatever their prompt or seed; another set, a scale, or no adapters (the
    trajectory id) route apart; a scale-0 pick is no adapter."""
    from zturbo.config import make_request
    from zturbo.server.ray import affinity_id

    from knob_files import make_lora

    make_lora(engine, tmp_path, name="a")
    make_lora(engine, tmp_path, name="b", seed=1)
    settings = engine.settings.model_copy(update={"lora_dirs": [str(tmp_path)]})

    def rid(**fields):
        return affinity_id(make_request(settings, **{"prompt": "x", "seed": 1, **fields}))

    assert rid(loras=["a"]) == rid(prompt="other", seed=9, loras=["a"])
    assert rid(loras=["a", "b"]) == rid(loras=["b", "a"], prompt="y")
    assert len({rid(loras=["a"]), rid(loras=["b"]), rid(loras=["a", "b"]), rid()}) == 4
    assert not rid(loras=["a:0"]).startswith("adapters-")  # routed by its trajectory
    assert rid() != rid(prompt="other")


def test_the_router_prefers_the_affinity_s_replica_only_while_it_holds_the_model():
    """The fine key (trajectory / adapter set) picks its last replica first only while that
    replica still holds the request's model; the coarse key (the model) keeps a request on
    the replicas that hold it until it has waited ``model_wait_s``, then lets Serve choose."""
    from zturbo.server.rayrouting import Recent, holders_only, preferred

    replicas = {"a": "replica a", "b": "replica b"}
    recent = Recent(2)
    recent.put("t1", "a")
    assert preferred(recent, "t1", "small", replicas, holders={"a"}) == "replica a"
    assert preferred(recent, "t1", "small", replicas, holders={"b"}) is None  # evicted it
    assert preferred(recent, "t1", None, replicas, holders=set()) == "replica a"
    assert preferred(recent, "t2", None, replicas, holders=set()) is None
    recent.put("t2", "c")  # a replica that is gone
    assert preferred(recent, "t2", None, replicas, holders=set()) is None
    recent.put("t3", "b")  # the LRU holds 2: t1 is out
    assert recent.get("t1") is None and recent.get("t3") == "b"
    recent.forget("b")
    assert recent.get("t3") is None
    assert holders_only({"a"}, replicas, waited_s=1.0, wait_s=5.0) == ["replica a"]
    assert holders_only({"a"}, replicas, waited_s=6.0, wait_s=5.0) is None
    assert holders_only(set(), replicas, waited_s=0.0, wait_s=5.0) is None
    assert holders_only({"gone"}, replicas, waited_s=0.0, wait_s=5.0) is None


def test_a_replica_keeps_as_many_models_as_its_budget_holds_of_the_largest(session_home):
    """max_num_models_per_replica from pool_memory and the cost model's estimate of the
    largest model: one when only it fits, both when both do, both without a budget."""
    from zturbo.generation.models import estimate_bytes
    from zturbo.server.pool import EnginePool
    from zturbo.server.ray import models_per_replica

    models = {"tiny": {"source": "demo"}, "small": {"source": "demo-small"}}
    base = Settings(model="tiny", models=models)
    small = estimate_bytes(base.model_settings("small"))

    def keeps(budget: float | None) -> int:
        memory = None if budget is None else str(int(budget))
        return models_per_replica(EnginePool(base.model_copy(update={"pool_memory": memory})))

    assert (keeps(1.02 * small), keeps(2.5 * small), keeps(None)) == (1, 2, 2)
