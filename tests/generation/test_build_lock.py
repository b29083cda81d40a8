"""Two engines in one process, loading per-request LoRAs from two threads, give the images
serial runs give: every module build (LoRA loads and deletes, model loads) holds one
process-wide lock, since peft and diffusers swap process-wide functions while they build."""

import threading

import numpy as np
import torch

import zturbo
from zturbo import Settings

from conftest import pixels
from knob_files import make_lora

STYLES = [f"style{i}" for i in range(6)]


def settings(folder) -> Settings:
    return Settings(model="demo", device="cpu", lora_dirs=[str(folder)], memory_cache_mb=0,
                    disk_cache_mb=0, redis_url=None, teleport=False)


def requests(lane: int) -> list[dict]:
    """Each request picks a LoRA this lane's engine has not loaded yet (a load per request,
    past the adapters an engine keeps: deletes too)."""
    return [{"prompt": "a red robot", "seed": 10 * lane + i, "width": 32, "height": 32,
             "steps": 2, "loras": [f"{STYLES[(i + 3 * lane) % len(STYLES)]}:{0.5 + lane}"]}
            for i in range(len(STYLES))]


def test_two_engines_loading_loras_in_two_threads_give_the_serial_pixels(tmp_path):
    folder = tmp_path / "loras"
    engine = zturbo.load("demo", settings=settings(folder))
    for i, name in enumerate(STYLES):  # six different LoRA files
        make_lora(engine, folder, name=name, seed=i)
    engine.close()
    serial = {}
    for lane in (0, 1):
        reference = zturbo.load("demo", settings=settings(folder))
        serial[lane] = [pixels(reference.generate(**r).images[0]) for r in requests(lane)]
        reference.close()
    engines = [zturbo.load("demo", settings=settings(folder)) for _ in (0, 1)]
    got: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def lane(i: int) -> None:
        try:
            start.wait()
            for r in requests(i):
                got[i].append(pixels(engines[i].generate(**r).images[0]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    wrong = [(i, k) for i in (0, 1) for k, (a, b) in enumerate(zip(got[i], serial[i]))
             if not np.array_equal(a, b)]
    assert not wrong, f"{len(wrong)} of {2 * len(STYLES)} images differ from serial runs"
    # the process can still build modules with real parameters afterwards
    after = zturbo.load("demo", settings=settings(folder))
    assert not any(p.is_meta for p in after.pipe.transformer.parameters())
    assert torch.nn.Module.register_parameter.__module__ == "torch.nn.modules.module"
    for e in engines + [after]:
        e.close()
