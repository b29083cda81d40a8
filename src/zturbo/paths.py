"""Where zturbo keeps its state: ``$ZTURBO_HOME`` or the user data dir."""

from __future__ import annotations

import functools
import os
import re
import site
import sysconfig
import tempfile
from pathlib import Path

import platformdirs


def state_dir() -> Path:
    """The state dir (demo models, caches, outputs): ``$ZTURBO_HOME`` or the user data dir."""
    home = os.environ.get("ZTURBO_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("zturbo"))


def contained_file(root: Path, relative: str | Path) -> Path | None:
    """``root / relative`` as a real path, only when it is a regular file inside ``root``'s
    real path: no ``..``, no absolute part, and no symlink (of a folder on the way or of the
    file) that leads out of ``root``. None otherwise. Every file a server serves from a
    folder goes through here."""
    real_root = Path(root).resolve()
    try:
        target = (real_root / relative).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    if not target.is_relative_to(real_root) or not target.is_file():
        return None
    return target


def writable_folder(folder: Path) -> Path:
    """``folder``, made if missing and proven writable (a probe file is made and removed);
    raises OSError (read-only file system, no permission, a file in the way)."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".zturbo-probe-")
    os.close(fd)
    os.unlink(probe)
    return folder


@functools.cache
def process_umask() -> int:
    """The process umask (read from /proc where it can be, so it is never changed, even
    for a moment; else set and put back once)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    found = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
    if found:
        return int(found.group(1), 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def as_user_file(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open()``
    would: 0666 less the umask. For what the user keeps (images, run folders, reports);
    cache entries and secrets stay private."""
    os.fchmod(fd, 0o666 & ~process_umask())


@functools.cache
def installed_distributions() -> tuple[str, ...]:
    """Every installed distribution with its version: the dist-info / egg-info folder names
    in the interpreter's install places (its site-packages, the user site, $PYTHONPATH).
    Not whatever sys.path holds now: libraries add folders to it as they import (setuptools
    its vendored packages), and two processes of one installation must agree."""
    places = {*site.getsitepackages(), sysconfig.get_paths()["purelib"],
              sysconfig.get_paths()["platlib"],
              *os.environ.get("PYTHONPATH", "").split(os.pathsep)}
    if site.ENABLE_USER_SITE:
        places.add(site.getusersitepackages())
    names: list[str] = []
    for place in sorted(p for p in places if p):
        try:
            with os.scandir(place) as found:
                names.extend(e.name for e in found if e.name.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
    return tuple(sorted(set(names)))
