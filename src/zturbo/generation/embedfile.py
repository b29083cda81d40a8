"""Prompt embeddings as a safetensors file: encode on one machine, generate on another.

``zturbo encode PROMPT -o emb.safetensors`` writes the DiT's text input (tensor ``prompt``,
and ``negative`` when a negative prompt is given) plus string metadata: the encoder
fingerprint, model, hidden size, template, hidden layer, long-prompt mode, token count.
``zturbo generate --embeddings emb.safetensors`` reads it on a generator-only engine that
never loads the text encoder. A Request names the file by the sha256 of its tensors
(``embeddings_sha256``), so the caches key on the content, never on a path.
safetensors only: nothing here can execute code from a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zturbo.caches.encoders import cached_embed
from zturbo.caches.packing import host
from zturbo.config import Request
from zturbo.engine.protocol import Engine
from zturbo.engine.steps import Embedding, text_token_limit
from zturbo.errors import ZTurboError
from zturbo.generation.orchestrator import embed_params
from zturbo.paths import as_user_file

FORMAT = "zturbo-embeddings"
VERSION = "1"
MAX_FILE_BYTES = 64 * 1024 * 1024  # 2 x 1504 x 2560 float32 is about 31 MiB
NAMES = ("prompt", "negative")


@dataclass
class EmbeddingFile:
    """The tensors of an embeddings file, its metadata and the sha256 naming its content."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return content_sha256(self.tensors)

    @property
    def hidden_size(self) -> int:
        return int(self.tensors["prompt"].shape[1])

    def request_fields(self) -> dict[str, Any]:
        """Request fields recording how these embeddings were made (for the PNG, the keys)."""
        meta = self.metadata
        fields: dict[str, Any] = {"prompt": meta.get("prompt") or "(prompt embeddings)",
                                  "embeddings_sha256": self.sha256}
        for name, cast in (("negative_prompt", str), ("template", str), ("template_body", str),
                           ("hidden_layer", int), ("long_prompt", str),
                           ("max_sequence_length", int)):
            if meta.get(name):
                fields[name] = cast(meta[name])
        return fields

    def for_engine(self, engine: Engine, need_negative: bool = False):
        """(Embedding, negative tensors or None) on the engine's device and dtype, checked."""
        check_compatible(self, engine)
        if need_negative and "negative" not in self.tensors:
            raise ZTurboError("guidance > 0 needs negative embeddings: encode with "
                              "--negative-prompt, or use guidance 0")
        move = {"device": engine.device, "dtype": engine.pipe.transformer.dtype}
        token_count = int(self.metadata.get("token_count") or self.tensors["prompt"].shape[0])
        emb = Embedding([self.tensors["prompt"].to(**move)], token_count,
                        self.metadata.get("truncated") == "true")
        negative = [self.tensors["negative"].to(**move)] if need_negative else None
        return emb, negative


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors (metadata excluded)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = host(tensors[name])
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encode(engine: Engine, request: Request) -> EmbeddingFile:
    """The request's prompt (and negative prompt, if any) through the engine's encoder
    (and its embedding cache)."""
    with engine.lock:
        emb, _ = cached_embed(engine, embed_params(request))
        tensors = {"prompt": host(emb.tensors[0])}
        if request.negative_prompt:
            negative, _ = cached_embed(engine, embed_params(request, negative=True))
            tensors["negative"] = host(negative.tensors[0])
    meta = {
        "format": FORMAT, "version": VERSION, "model": engine.spec,
        "encoder_fingerprint": engine.text_fingerprint,
        "hidden_size": str(tensors["prompt"].shape[1]), "dtype": str(emb.tensors[0].dtype),
        "token_count": str(emb.token_count), "truncated": "true" if emb.truncated else "false",
        "prompt": request.prompt, "negative_prompt": request.negative_prompt,
        "template": request.template or "", "template_body": request.template_body or "",
        "hidden_layer": str(request.hidden_layer), "long_prompt": request.long_prompt,
        "max_sequence_length": str(request.max_sequence_length),
    }
    return EmbeddingFile(tensors, meta)


def to_bytes(file: EmbeddingFile) -> bytes:
    """The safetensors bytes (what ``POST /api/encode`` returns)."""
    from safetensors.torch import save  # lazy: keeps CLI start fast

    return save(file.tensors, metadata=file.metadata)


def save(file: EmbeddingFile, path: str | Path) -> Path:
    """Write atomically (temp file + rename); overwrites ``path`` only once complete."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ZTurboError(f"{path}: embeddings files end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".zturbo-", suffix=".safetensors", dir=path.parent)
    try:
        as_user_file(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(to_bytes(file))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def from_bytes(data: bytes, source: str = "embeddings") -> EmbeddingFile:
    """Parse and check safetensors bytes: known names, 2-D float tensors, our format tag."""
    from safetensors import SafetensorError  # lazy: keeps CLI start fast
    from safetensors.torch import load

    if len(data) > MAX_FILE_BYTES:
        raise ZTurboError(f"{source}: {len(data)} bytes is over the limit {MAX_FILE_BYTES}")
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len]) if 0 < header_len < len(data) else None
        tensors = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise ZTurboError(f"{source} is not a safetensors file: {exc}") from None
    metadata = (header or {}).get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ZTurboError(f"{source} is not a zturbo embeddings file (make one with "
                          f"`zturbo encode PROMPT -o FILE.safetensors`)")
    if metadata.get("version") != VERSION:
        raise ZTurboError(f"{source}: embeddings format version {metadata.get('version')!r}; "
                          f"this zturbo reads version {VERSION}")
    unknown = sorted(set(tensors) - set(NAMES))
    if "prompt" not in tensors or unknown:
        raise ZTurboError(f"{source}: expected tensors 'prompt' (and 'negative'), found "
                          f"{', '.join(sorted(tensors)) or 'none'}")
    for name, t in tensors.items():
        if t.ndim != 2 or not t.is_floating_point() or t.shape[0] < 1:
            raise ZTurboError(f"{source}: tensor {name!r} must be a float [tokens, hidden] "
                              f"matrix, got {t.dtype} {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ZTurboError(f"{source}: tensor {name!r} holds NaN or infinite values")
    return EmbeddingFile(tensors, dict(metadata))


def load(path: str | Path) -> EmbeddingFile:
    """Read an embeddings file (``from_bytes`` checks it)."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ZTurboError(f"{path}: {size} bytes is over the limit {MAX_FILE_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise ZTurboError(f"cannot read embeddings {path}: {exc.strerror or exc}") from None
    return from_bytes(data, str(path))


def check_compatible(file: EmbeddingFile, engine: Engine) -> None:
    """The DiT must take this hidden size and this many tokens, or a clear error."""
    transformer = engine.pipe.transformer
    want = int(transformer.config.cap_feat_dim)
    for name, t in file.tensors.items():
        if int(t.shape[1]) != want:
            raise ZTurboError(
                f"embeddings {name!r} have hidden size {t.shape[1]} but this model's DiT takes "
                f"{want} (cap_feat_dim): they were made by another text encoder "
                f"({file.metadata.get('model', 'unknown model')})"
            )
        limit = text_token_limit(transformer)
        if int(t.shape[0]) > limit:
            raise ZTurboError(f"embeddings {name!r} have {t.shape[0]} tokens; this DiT takes at "
                              f"most {limit}")
