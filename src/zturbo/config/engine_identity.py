"""The identity of an engine's settings, known before anything loads (``engine_key``).

The settings that build the engine: weights, dtype, device, LoRAs, single-file transformer,
placement, speed levers, and the teleport resume points. A local file in those settings is
named by absolute path, size and modification time, so another file under the same name
never matches. ``zturbo generate`` compares it with a running server's (``server.running``);
the lab keys its frames and default run folders with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from zturbo.config.groups import fields_where
from zturbo.config.settings import Settings

# the settings that decide which engine a process loads (their Group says engine=True)
ENGINE_FIELDS = fields_where(Settings, engine=True)


def _file_identity(text: str) -> str:
    """A local file named in a setting, as ``abs-path|size|mtime``; other text unchanged.

    ``PATH:SCALE`` (a LoRA) keeps its scale."""
    path, sep, scale = text, "", ""
    if not Path(text).expanduser().exists() and ":" in text:
        path, sep, scale = text.rpartition(":")
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        return text
    stat = candidate.stat()
    return f"{candidate.resolve()}|{stat.st_size}|{stat.st_mtime_ns}{sep}{scale}"


def _model_identity(spec: str) -> str:
    """A local diffusers folder by absolute path; a Hub id or demo name as given."""
    folder = Path(spec).expanduser()
    return str(folder.resolve()) if (folder / "model_index.json").is_file() else spec


def engine_key(settings: Settings) -> str:
    """Digest of the settings that decide which engine a process loads."""
    values: dict[str, Any] = {name: getattr(settings, name) for name in ENGINE_FIELDS}
    values["model"] = _model_identity(settings.model)
    values["loras"] = [_file_identity(spec) for spec in settings.loras]
    if settings.transformer_file:
        values["transformer_file"] = _file_identity(settings.transformer_file)
    if settings.controlnet:  # a folder by its absolute path, a file by path, size and mtime
        values["controlnet"] = _file_identity(str(Path(settings.controlnet).expanduser().resolve()))
    else:  # added later: off, it leaves the key (a Lab run folder keeps its name)
        values.pop("controlnet")
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
