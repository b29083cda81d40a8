"""A model's own request defaults, read from the model folder, for the fields the user did
not set.

Z-Image-Turbo and the undistilled Z-Image (the base model) share every component class and
config except the scheduler: Turbo ships ``shift`` 3.0, the base model 6.0. So, in order:

1. the scheduler's ``shift`` (``scheduler/scheduler_config.json``) is the ``shift`` default:
   the schedule the model was trained for, as diffusers uses it;
2. a scheduler that is not Turbo's (shift other than 3.0) marks an undistilled model, whose
   defaults are ``UNDISTILLED``: 50 steps, real CFG (guidance 4), no CFG renormalisation or
   truncation (the model card's recommendation);
3. a ``zturbo.toml`` beside ``model_index.json`` overrides both with its ``[defaults]``
   table (any request default: ``steps``, ``guidance``, ``cfg_normalization``...), for a
   fine-tune the rules above misjudge.

A value the user set (flag, environment, ``config.toml``) always wins: ``with_model_defaults``
fills only the settings that came from nowhere. The result is ordinary request defaults,
so cache keys see the values that ran, never where they came from.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zturbo.config.request import REQUEST_DEFAULTS, field_adapter
from zturbo.config.settings import Settings, first_error
from zturbo.engine import demo
from zturbo.errors import ZTurboError
from zturbo.paths import state_dir

DEFAULTS_FILE = "zturbo.toml"  # beside model_index.json: a [defaults] table
TURBO_SHIFT = 3.0  # Z-Image-Turbo's scheduler shift
UNDISTILLED = {"steps": 50, "guidance": 4.0, "cfg_normalization": False, "cfg_truncation": 1.0}


def defaults_from(scheduler: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """Request defaults from a model's scheduler config and its declared ``[defaults]``."""
    out: dict[str, Any] = {}
    shift = scheduler.get("shift")
    if isinstance(shift, int | float) and not isinstance(shift, bool):
        out["shift"] = float(shift)
        if float(shift) != TURBO_SHIFT:
            out.update(UNDISTILLED)
    return {**out, **declared}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ZTurboError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def declared_defaults(folder: Path) -> dict[str, Any]:
    """The ``[defaults]`` table of ``zturbo.toml`` in ``folder``, each value checked like the
    Request field it sets ({} without the file)."""
    path = folder / DEFAULTS_FILE
    try:
        table = tomllib.loads(path.read_text()).get("defaults", {})
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZTurboError(f"cannot read {path}: {exc}") from None
    if not isinstance(table, dict):
        raise ZTurboError(f"{path}: [defaults] must be a table")
    unknown = sorted(set(table) - set(REQUEST_DEFAULTS))
    if unknown:
        raise ZTurboError(f"{path}: [defaults] has unknown key(s) {', '.join(unknown)} (request "
                          f"defaults: {', '.join(REQUEST_DEFAULTS)})")
    for name, value in table.items():
        try:
            field_adapter(name).validate_python(value)
        except ValidationError as exc:
            raise ZTurboError(f"{path}: [defaults] {name}: {first_error(exc)}") from None
    return table


def folder_defaults(folder: Path | None) -> dict[str, Any]:
    """The request defaults a model folder gives (None, a model built in memory: none)."""
    if folder is None:
        return {}
    return defaults_from(_read_json(folder / "scheduler" / "scheduler_config.json"),
                         declared_defaults(folder))


def model_defaults(spec: str, revision: str | None = None) -> dict[str, Any]:
    """The request defaults of the model ``spec`` names, found without building, loading or
    downloading anything: a small demo's from its recipe, a folder's or a cached Hub
    snapshot's from its files; {} when the model is not at hand (yet)."""
    if demo.is_full(spec):
        return {}
    if demo.is_demo(spec):
        return defaults_from(demo.scheduler_config(spec), {})
    return folder_defaults(model_folder(spec, revision))


def with_model_defaults(settings: Settings, defaults: Mapping[str, Any]) -> Settings:
    """``settings`` with the model's ``defaults`` for the request defaults nobody set (no
    flag, variable or config key gave them)."""
    unset = {name: value for name, value in defaults.items()
             if name in REQUEST_DEFAULTS and name not in settings.model_fields_set}
    return settings.model_copy(update=unset) if unset else settings


def settings_for_model(settings: Settings) -> Settings:
    """``settings`` with the defaults of the model they name (``settings.model``) where the
    user set nothing: what every front end builds its Requests with."""
    return with_model_defaults(settings, model_defaults(settings.model, settings.revision))


def model_folder(spec: str, revision: str | None) -> Path | None:
    """The local folder ``spec`` names, found without building or downloading anything."""
    if demo.is_demo(spec):
        folder: Path | None = demo.folder(spec, state_dir() / "models")
    elif (Path(spec).expanduser() / "model_index.json").is_file():
        folder = Path(spec).expanduser()
    else:
        folder = _hub_snapshot(spec, revision)
    return folder if folder is not None and (folder / "model_index.json").is_file() else None


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download  # lazy: only for a Hub id
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):  # not cached, or not a Hub id
        return None
