"""Host/device crossings, exercised without a GPU.

``offcpu.OffCpu`` tensors claim a device that is not the CPU and refuse ``.numpy()`` as a
real CUDA tensor does, while their data stays on the CPU. Every place that reads tensor bytes on the
host (digests, cache entries, previews, embedding files, teleport captures) must copy to
the host explicitly and so give the same result as for the CPU tensor.
"""

from __future__ import annotations

import sys

import pytest
import torch

from zturbo.caches.packing import pack, tensor_digest, unpack

from offcpu import off_cpu


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, generator=g),
            "b": torch.randn(2, 4, generator=g).to(torch.bfloat16),
            "empty": torch.empty(0, 3)}


def test_offcpu_tensor_behaves_like_a_device_tensor():
    t = off_cpu(torch.ones(2))
    assert t.device.type != "cpu"
    with pytest.raises((TypeError, RuntimeError)):
        t.numpy()  # what torch does for a real CUDA tensor: no implicit copy to the host
    cpu = t.to("cpu")
    assert type(cpu) is torch.Tensor and cpu.device.type == "cpu"


def test_tensor_digest_of_device_tensors_equals_the_cpu_digest():
    plain = _tensors()
    assert tensor_digest({k: off_cpu(v) for k, v in plain.items()}) == tensor_digest(plain)


def test_pack_of_device_tensors_round_trips_on_the_cpu():
    plain = _tensors()
    tensors, meta = unpack(pack({k: off_cpu(v) for k, v in plain.items()}, {"key": "ab"}))
    assert meta == {"key": "ab"}
    for name, value in plain.items():
        assert tensors[name].device.type == "cpu" and torch.equal(tensors[name], value)


def test_teleport_capture_keeps_a_copy_and_stores_it_from_the_host(tmp_path):
    from types import SimpleNamespace

    from zturbo.caches import MemoryTier, TieredCache
    from zturbo.caches.teleport import Replay, store

    replay = Replay({2: "00" * 32})
    latents = torch.randn(1, 16, 4, 4)
    on_device = off_cpu(latents)
    replay.capturing(None)(2, 4, on_device)
    kept = replay.captured[2]
    assert kept is not on_device  # a copy: the pipeline may reuse its buffer
    engine = SimpleNamespace(caches=TieredCache([MemoryTier(1 << 20)], write_queue=2))
    store(engine, replay, 0.1)  # the cache writer moves it to the host and packs it
    data, _ = engine.caches.get("teleport", "00" * 32)
    tensors, meta = unpack(data)
    assert tensors["latents"].device.type == "cpu" and torch.equal(tensors["latents"], latents)
    assert meta["step"] == "2"
    engine.caches.close()


def test_preview_of_device_latents():
    from zturbo.server.preview import latent_rgb

    latents = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    assert latent_rgb(off_cpu(latents)).tobytes() == latent_rgb(latents).tobytes()


def test_embedding_file_digest_of_device_tensors():
    from zturbo.generation.embedfile import content_sha256

    plain = _tensors()
    assert content_sha256({k: off_cpu(v) for k, v in plain.items()}) == content_sha256(plain)


def test_request_embedding_digest_with_the_encoder_on_a_device(engine, monkeypatch):
    """The real demo text encoder runs; its embedding is handed on as a device tensor, as on
    a GPU engine. The request's embedding digest (teleport key) and the embedding cache
    entry must come out exactly as for the CPU tensor."""
    from zturbo import make_request
    from zturbo.engine.steps import Embedding
    from zturbo.generation.orchestrator import embed_request

    request = make_request(engine.settings, prompt="a device crossing", width=64, height=64,
                           steps=2, guidance=1.5, negative_prompt="blur")
    want = embed_request(engine, request)
    real_embed = sys.modules["zturbo.engine.steps"].embed

    def embed_on_device(*args, **kwargs):
        emb = real_embed(*args, **kwargs)
        return Embedding([off_cpu(t) for t in emb.tensors], emb.token_count, emb.truncated)

    for name, module in list(sys.modules.items()):  # wherever the embedding cache finds it
        if name.startswith("zturbo") and getattr(module, "embed", None) is real_embed:
            monkeypatch.setattr(module, "embed", embed_on_device)
    request = make_request(engine.settings, prompt="a device crossing, uncached",
                           width=64, height=64, steps=2, guidance=1.5,
                           negative_prompt="blur, uncached")
    text = embed_request(engine, request)
    emb, negative, digest = text.prompt, text.negative, text.digest
    assert emb.tensors[0].device.type != "cpu" and negative[0].device.type != "cpu"
    plain = Embedding([t.to("cpu") for t in emb.tensors], emb.token_count, emb.truncated)
    assert digest == tensor_digest({"p0": plain.tensors[0], "n0": negative[0].to("cpu")})
    assert want.digest != digest  # another prompt, another digest (the test compares something)
    monkeypatch.undo()
    again = embed_request(engine, request)  # now from the embedding cache: CPU bytes stored
    assert again.digest == digest
