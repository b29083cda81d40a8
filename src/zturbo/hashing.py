"""Content digests: canonical JSON values and files (weights, LoRAs), the ground of every
fingerprint and cache key."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from zturbo.paths import state_dir


def digest(data: Any) -> str:
    """sha256 of a JSON-able value in canonical form."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


_RACY_NS = 2_000_000_000  # a file changed this recently is hashed, not memoised


def _memo_key(path: Path, stat: os.stat_result) -> str:
    return (f"{path.resolve()}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|"
            f"{stat.st_mtime_ns}|{stat.st_ctime_ns}")


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in the state dir so it runs once per file version.

    The memo is keyed by path, device, inode, size, mtime *and* ctime: a file replaced by
    another of the same size with its mtime kept (``cp -p``, ``rsync -a``) gets a new inode
    or at least a new ctime (set by the kernel on every write, rename or ``utime``; no user
    can set it back), so it is hashed again. A file changed in the last seconds is not
    memoised ("racy" as git says: a coarse clock could give its next version the same
    ctime), nor one that changed while it was being read."""
    stat = path.stat()
    memo_key = _memo_key(path, stat)
    memo_path = state_dir() / "file_hashes.json"
    memo = read_memo(memo_path)
    if memo_key in memo:
        return memo[memo_key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    settled = time.time_ns() - max(stat.st_ctime_ns, stat.st_mtime_ns) > _RACY_NS
    if not settled or _memo_key(path, path.stat()) != memo_key:
        return h.hexdigest()
    memo[memo_key] = h.hexdigest()
    write_memo(memo_path, memo)
    return memo[memo_key]


def read_memo(path: Path) -> dict[str, Any]:
    """A JSON memo from the state dir; a missing, unreadable or foreign one is empty."""
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def write_memo(path: Path, memo: dict[str, Any]) -> None:
    """Replace a JSON memo atomically (a reader never sees half of it); a failure is
    ignored: a memo is an optimisation only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, path)
    except OSError:
        pass


COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")  # a model folder's
# what a component's weights are made of (weights, configs, tokenizer files)
_HASHED_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".txt", ".model", ".jinja")


def controlnet_identity(path: Path) -> str:
    """A ControlNet's weights by content: its single file's sha256, or its folder's files'."""
    if path.is_file():
        return f"file:{file_sha256(path)}"
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES)
    return digest({str(p.relative_to(path)): file_sha256(p) for p in files})


def weights_identity(folder: Path, component: str) -> str:
    """What identifies one component's weights: a Hub revision, or hashes of its files."""
    parts = folder.resolve().parts
    if "snapshots" in parts:  # a Hugging Face cache snapshot: the folder name is the commit
        i = parts.index("snapshots")
        repo = parts[i - 1].removeprefix("models--").replace("--", "/")
        return f"hub:{repo}@{parts[i + 1]}/{component}"
    sub = folder / component
    files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES)
    return digest({str(p.relative_to(sub)): file_sha256(p) for p in files})
