"""The identity parts of an engine, as a running server records them and as a client
computes them for the engine it would load; ``zturbo generate`` sends its request to a
server only when every part is equal (zturbo.server.running). Compared cheapest first:

- ``settings``: the engine settings that are not files (dtype, device, placement, speed
  levers, attention, compile, the teleport resume points);
- ``versions``: the libraries on the numeric path;
- ``files``: the weights of every component by content (file hashes, memoised in the state
  dir by zturbo.hashing, or a Hub snapshot's commit), a single-file transformer and the
  fused LoRAs by sha256 and scale;
- ``numerics``: the engine's numerics identity (``numerics``: measured live in a server,
  memoised per environment for a fresh client by ``fresh_numerics``, so a client imports
  torch once per environment).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping
from importlib import metadata as dist
from pathlib import Path
from typing import Any

from zturbo.config import Settings, state_dir
from zturbo.config.engine_identity import ENGINE_FIELDS
from zturbo.config.model_defaults import model_folder
from zturbo.engine.lora import parse_lora
from zturbo.hashing import (
    COMPONENTS,
    controlnet_identity,
    digest,
    file_sha256,
    read_memo,
    weights_identity,
    write_memo,
)
from zturbo.paths import installed_distributions

CONTENT_FIELDS = ("model", "loras", "transformer_file", "controlnet")  # compared by content: ``files``
NUMERIC_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "safetensors")
PART_ORDER = ("settings", "versions", "files", "numerics")  # cheapest first
NUMERICS_MEMO = "client_numerics.json"
MEMO_ENTRIES = 64
SHELL_ONLY = ("PWD", "OLDPWD", "_", "SHLVL")  # the shell's bookkeeping: no kernel reads it
CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "stepping", "microcode",
              "flags", "CPU implementer", "CPU architecture", "CPU variant", "CPU part",
              "CPU revision", "Features")


def settings_key(settings: Settings) -> str:
    """Digest of the engine settings that are not files (those are compared by content)."""
    return digest({name: getattr(settings, name) for name in ENGINE_FIELDS
                   if name not in CONTENT_FIELDS})


def versions() -> dict[str, str | None]:
    """The installed versions of the libraries on the numeric path (read without importing)."""
    found: dict[str, str | None] = {}
    for name in NUMERIC_LIBRARIES:
        try:
            found[name] = dist.version(name)
        except dist.PackageNotFoundError:
            found[name] = None
    return found


def numerics(settings: Settings) -> dict[str, Any]:
    """The numerics identity of the engine ``settings`` make, measured in this process: per
    component, on the device and in the dtype the settings place it, at its model's shapes
    (the same ``zturbo.numerics`` identity the engine's fingerprint holds). A server calls
    it live: its process may have changed a switch."""
    from zturbo.engine.placement import pick_device, pick_dtype  # torch: only when measuring
    from zturbo.numerics import (  # torch: only when measuring
        component_placements,
        folder_shapes,
        numerics_identity,
    )

    device = pick_device(settings.device)
    dtype = str(pick_dtype(settings.dtype, device)).removeprefix("torch.")
    own = {name: str(pick_device(spec)) if spec else None for name, spec in
           (("text_encoder", settings.text_encoder_device), ("vae", settings.vae_device))}
    shapes = folder_shapes(model_folder(settings.model, settings.revision))
    identity = numerics_identity(component_placements(str(device), dtype, shapes, own))
    return json.loads(json.dumps(identity, default=str))


def fresh_numerics(settings: Settings) -> dict[str, Any]:
    """``numerics`` as a fresh process gets it (a client, before it imports torch): memoised
    in the state dir under everything two fresh processes can differ in (every environment
    variable but the shell's working directory, the installed packages, Python, the CPU and
    GPU, the CPUs this process may run on, the engine settings), so only the first client
    in an environment imports torch to compare."""
    key = digest({**process_facts(os.environ), "settings": settings_key(settings),
                  "model": [settings.model, settings.revision,  # the canary's shapes, once
                            str(model_folder(settings.model, settings.revision))]})  # there
    path = state_dir() / NUMERICS_MEMO
    memo = read_memo(path)
    if not isinstance(memo.get(key), dict):
        memo[key] = numerics(settings)
        write_memo(path, dict(list(memo.items())[-MEMO_ENTRIES:]))
    return memo[key]


def fresh_identity(settings: Settings, env: Mapping[str, str]) -> str | None:
    """The identity of the engine ``settings`` make, known without loading it or importing
    torch: every part above but the measured numerics, which a fresh process measures
    (or reads from its memo) from what is here instead: ``process_facts`` of ``env`` (the
    environment the process started with), the model spec, and zturbo's own sources
    (``code_identity``). Two processes with equal identities load engines with equal
    fingerprints. None when a file the settings name is missing."""
    files = file_parts(settings)
    if files is None:
        return None
    return digest({**process_facts(env), "settings": settings_key(settings),
                   "model": [settings.model, settings.revision], "versions": versions(),
                   "files": files, "code": code_identity()})


def process_facts(env: Mapping[str, str]) -> dict[str, Any]:
    """What two fresh processes can differ in: every environment variable but the shell's
    working directory, the installed packages, Python, the CPU and GPU, the CPUs this
    process may run on."""
    return {"env": {k: v for k, v in env.items() if k not in SHELL_ONLY},
            "packages": installed_distributions(), "python": sys.version, "host": _host()}


@functools.cache
def code_identity() -> str:
    """zturbo's own sources by path, size and modification time (an edited checkout is
    another engine: its fingerprint or its pixels may have changed)."""
    root = Path(__file__).resolve().parent.parent
    files = []
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        files.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
    return digest(files)


def _host() -> dict[str, Any]:
    """The CPU (model and flags, not its clock), the CPUs this process may use, the GPUs."""
    facts: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        facts["cpus"] = sorted(os.sched_getaffinity(0))
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        facts["cpu"] = [line for line in block.splitlines()
                        if line.split(":")[0].strip() in CPU_FIELDS]
    except OSError:
        facts["cpu"] = platform.processor()
    gpus = sorted(Path("/proc/driver/nvidia").glob("gpus/*/information"))
    facts["gpus"] = [_text(p) for p in [Path("/proc/driver/nvidia/version"), *gpus]]
    return facts


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def file_parts(settings: Settings) -> dict[str, Any] | None:
    """The weights and fused files ``settings`` name, by content (None: one is missing)."""
    folder = model_folder(settings.model, settings.revision)
    try:
        specs = [parse_lora(text) for text in settings.loras]
        if folder is None or not all(spec.path.is_file() for spec in specs):
            return None
        weights = {c: weights_identity(folder, c) for c in COMPONENTS}
        if settings.transformer_file:
            weights["transformer"] = f"file:{file_sha256(Path(settings.transformer_file))}"
        if settings.controlnet:
            controlnet = Path(settings.controlnet).expanduser()
            if not controlnet.exists():
                return None
            weights["controlnet"] = controlnet_identity(controlnet)
        loras = [{"sha256": file_sha256(s.path), "scale": float(s.scale)} for s in specs]
    except (OSError, ValueError):  # a file gone or unreadable meanwhile, a bad LoRA spec
        return None
    return {"weights": weights, "loras": loras}


def client_parts(settings: Settings) -> dict[str, Callable[[], Any]]:
    """How this process computes each identity part for ``settings`` (called lazily)."""
    return {"settings": lambda: settings_key(settings), "versions": versions,
            "files": lambda: file_parts(settings), "numerics": lambda: fresh_numerics(settings)}


def same_identity(identity: dict[str, Any], parts: dict[str, Callable[[], Any]],
                  known: dict[str, Any]) -> bool:
    """Whether every part of a recorded ``identity`` equals this process's, computed lazily
    (cheapest first) and kept in ``known`` for the next record."""
    for name in PART_ORDER:
        if name not in known:  # as a record holds it (JSON: lists, not tuples)
            known[name] = json.loads(json.dumps(parts[name](), default=str))
        if known[name] is None or identity.get(name) != known[name]:
            return False
    return set(identity) == set(PART_ORDER)
