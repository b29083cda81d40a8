"""The shipped deployment files parse and name what the code provides (the Serve config
itself is deployed by tests/test_serve_ray.py; the KubeRay manifest cannot run here)."""

from pathlib import Path

import yaml

from zturbo.serve_ray import app_builder
from zturbo.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SCALE_KEYS = {"replicas", "autoscale", "target_ongoing", "max_ongoing", "max_queued",
              "affinity", "retry_after_s"}


def _apps(config: dict) -> list[dict]:
    return config["applications"]


def test_kuberay_manifest_embeds_a_serve_config_the_builder_accepts():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    for app in _apps(serve_config) + _apps(shipped):
        assert app["import_path"] == "zturbo.serve_ray:app_builder" and callable(app_builder)
        unknown = set(app["args"]) - SCALE_KEYS - set(Settings.model_fields) - {"profile"}
        assert not unknown, unknown
    redis_conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["redis.conf"]
    assert "maxmemory-policy allkeys-lru" in redis_conf and "maxmemory " in redis_conf
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert workers["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
