"""Where zturbo keeps its state: ``$ZTURBO_HOME`` or the user data dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def state_dir() -> Path:
    """The state dir (demo models, caches, outputs): ``$ZTURBO_HOME`` or the user data dir."""
    home = os.environ.get("ZTURBO_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("zturbo"))
