"""LoRAs, fused into the transformer at load, or picked per request as adapters.

Every file is read and converted by ``lora_layouts`` (diffusers/PEFT, kohya, musubi-tuner,
ComfyUI, ai-toolkit, DiffSynth-Studio, LyCORIS LoKr/LoHa) and fitted by ``lora_report``,
which refuses keys it cannot apply (listed) unless ``lora_partial`` allows it; the
converted tensors go to diffusers' loader. Fused LoRAs are fused with
their scales and the adapter layers dropped, so generation runs the plain (faster)
weights (on a GGUF transformer they stay unfused: quantised weights take no delta). LoRAs are therefore engine-level: a different set is a different engine, and
their identity (the digest of the converted tensors, and the scale) goes into
``engine.extras["loras"]``, which the model fingerprint digests.

Over HTTP a LoRA is picked by *name* from the configured ``lora_dirs`` (``resolve_lora``),
never by a path a client sends. A pick that names a sha256 (a stored request: ``--from``, a
replayed HTTP body) resolves only to a file with that content, searched by content in the
LoRA folders (``lora_by_content``); a file that merely has the name is never taken for it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from safetensors import SafetensorError

from zturbo.buildlock import BUILD_LOCK
from zturbo.errors import ZTurboError
from zturbo.hashing import file_sha256

if TYPE_CHECKING:  # the readers import torch: loaded where a LoRA is read, not by config
    from zturbo.engine.lora_report import Checked
    from zturbo.engine.protocol import Engine

# What loading a file that is not a LoRA raises (a bad safetensors header among them)
LOAD_ERRORS = (ValueError, KeyError, RuntimeError, OSError, SafetensorError)

MAX_LORAS = 8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the scale it is fused with."""

    path: Path
    scale: float = 1.0


def _names_a_lora_file(path: str) -> bool:
    """Whether ``path`` reads as a LoRA file (so a ':' after it starts a scale)."""
    return path.endswith(".safetensors") or Path(path).expanduser().is_file()


def parse_lora(text: str | LoraSpec) -> LoraSpec:
    """``PATH[:SCALE]`` -> LoraSpec (a path may itself hold ':' when no scale follows)."""
    if isinstance(text, LoraSpec):
        return text
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            if _names_a_lora_file(head) and not Path(text).expanduser().exists():
                raise ZTurboError(f"LoRA scale {tail!r} for {head} is not a number") from None
            # otherwise no scale: the ':' belongs to the path
    if not -10.0 <= scale <= 10.0:
        raise ZTurboError(f"LoRA scale {scale} for {path} is outside -10..10")
    return LoraSpec(Path(path).expanduser(), scale)


def _check_name(name: str, lora_dirs: list[str]) -> None:
    if not _NAME.fullmatch(name) or ".." in name:
        raise ZTurboError(f"invalid LoRA name {name!r}: use a file name from the LoRA folders")
    if not lora_dirs:
        raise ZTurboError("no LoRA folders configured (setting lora_dirs)")


def _in_folder(root: Path, filename: str) -> Path | None:
    """``root/filename`` resolved, if it is a file directly in ``root`` (a link leading
    out of the folder is not)."""
    candidate = (root / filename).resolve()
    return candidate if candidate.parent == root and candidate.is_file() else None


def _named(name: str, lora_dirs: list[str]) -> Path | None:
    filename = name if name.endswith(".safetensors") else f"{name}.safetensors"
    for folder in lora_dirs:
        found = _in_folder(Path(folder).expanduser().resolve(), filename)
        if found is not None:
            return found
    return None


def resolve_lora(name: str, lora_dirs: list[str]) -> Path:
    """The file for a LoRA *name* (``anime`` or ``anime.safetensors``) in ``lora_dirs``.

    Names only: separators, ``..`` and absolute paths are refused, so an HTTP client
    can never reach a file outside the configured folders.
    """
    _check_name(name, lora_dirs)
    path = _named(name, lora_dirs)
    if path is None:
        raise ZTurboError(f"no LoRA named {name!r} in the LoRA folders")
    return path


def _lora_files(lora_dirs: list[str]) -> list[Path]:
    """Every file ``resolve_lora`` can reach, folder by folder."""
    files: list[Path] = []
    for folder in lora_dirs:
        root = Path(folder).expanduser().resolve()
        if root.is_dir():
            files.extend(p for p in sorted(root.glob("*.safetensors"))
                         if _NAME.fullmatch(p.name) and _in_folder(root, p.name) is not None)
    return files


def _content(path: Path) -> str | None:
    """A LoRA file's content identity (``lora_digest``), None for a file that is none."""
    try:
        return lora_digest(path, partial=True)
    except (ZTurboError, OSError):
        return None


def lora_by_content(sha256: str, name: str, lora_dirs: list[str]) -> Path:
    """The file in ``lora_dirs`` whose content has ``sha256``: the one named ``name`` when
    it has that content, else any other (hashes are memoised, so a search reads each file
    version once); a clear error when none has it."""
    _check_name(name, lora_dirs)
    named = _named(name, lora_dirs)
    if named is not None and _content(named) == sha256:
        return named
    for path in _lora_files(lora_dirs):
        if path.resolve() != named and _content(path) == sha256:
            return path.resolve()
    now = (f"the file named {name!r} has other content" if named is not None
           else f"none is named {name!r}")
    raise ZTurboError(f"LoRA {name!r}: no file in the LoRA folders has the sha256 the request "
                      f"names ({sha256[:16]}...; {now}); put that file back, or pick the LoRA "
                      f"by name without a sha256")


def list_loras(lora_dirs: list[str]) -> list[str]:
    """The LoRA names ``resolve_lora`` accepts (for a server's listing)."""
    return sorted({p.stem for p in _lora_files(lora_dirs)})


def load_checked(pipe, path: Path, adapter: str, partial: bool = False,
                 scale: float = 1.0) -> Checked:
    """Read, convert (any layout: ``lora_layouts``), fit and load one LoRA file as the
    adapter ``adapter``; refused with the keys it cannot apply unless ``partial``. A failed
    load leaves no partial adapter behind."""
    from zturbo.engine.lora_report import check, linears, require_applicable  # torch

    checked = check(path, linears(pipe.transformer), scale)
    require_applicable(checked, partial)
    try:
        with BUILD_LOCK:  # peft swaps process-wide functions while it builds the adapter
            pipe.load_lora_weights(dict(checked.tensors), adapter_name=adapter)
    except Exception as exc:
        _drop_adapter(pipe, adapter)
        if isinstance(exc, LOAD_ERRORS):
            raise ZTurboError(f"cannot load LoRA {path.name}: {exc}") from None
        raise
    return checked


def apply_loras(pipe, specs: list[LoraSpec], fuse: bool = True,
                partial: bool = False) -> list[dict[str, Any]]:
    """Load, check and scale LoRAs on ``pipe.transformer``; their identities (the digest of
    the converted tensors: one LoRA in two layouts is one identity).

    Fused (the default) they cost nothing per step. Quantised (GGUF) weights cannot take a
    fused delta, so there the adapters stay as active peft layers with their scales.
    """
    with BUILD_LOCK:
        return _apply_loras(pipe, specs, fuse, partial)


def _apply_loras(pipe, specs: list[LoraSpec], fuse: bool,
                 partial: bool) -> list[dict[str, Any]]:
    if len(specs) > MAX_LORAS:
        raise ZTurboError(f"{len(specs)} LoRAs given; the limit is {MAX_LORAS}")
    names, identities = [], []
    for i, spec in enumerate(specs):
        adapter = f"lora{i}"
        checked = load_checked(pipe, spec.path, adapter, partial, spec.scale)
        names.append(adapter)
        identity = {"sha256": checked.report.digest, "scale": spec.scale, "fused": fuse}
        if checked.skipped:
            identity["skipped"] = [s["key"] for s in checked.skipped]
        identities.append(identity)
    if names:
        pipe.set_adapters(names, adapter_weights=[s.scale for s in specs])
        if fuse:
            pipe.fuse_lora(components=["transformer"], adapter_names=names)
            pipe.unload_lora_weights()
    return identities


# -- per-request LoRAs (HTTP: by name from lora_dirs) ------------------------------------------

class LoraPick(BaseModel):
    """A LoRA chosen per request by *name* from ``lora_dirs``; ``make_request`` fills in the
    file's sha256 so the teleport key follows the file's content, not its name."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=128)
    scale: Annotated[float, Strict()] = Field(1.0, ge=-10.0, le=10.0)  # no true, NaN or "1"
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # keys of the file that were not applied (only with lora_partial; make_request fills it
    # in, so the response and the PNG metadata say what was skipped)
    skipped: tuple[str, ...] = Field((), max_length=4096)


def _lora_item(item: Any) -> Any:
    """``"NAME[:SCALE]"`` -> ``{"name", "scale"}``; other items pass unchanged."""
    if not isinstance(item, str):
        return item
    head, sep, tail = item.rpartition(":")
    if not (sep and head):
        return {"name": item}
    try:
        return {"name": head, "scale": float(tail)}
    except ValueError:
        raise ValueError(f"LoRA {item!r} is not NAME or NAME:SCALE (a number)") from None


def _lora_items(value: Any) -> Any:
    """LoRA picks in any accepted form: a list of ``"NAME[:SCALE]"`` strings or objects."""
    if isinstance(value, str):
        raise ValueError('loras is a list, e.g. ["anime:0.8"] or [{"name": "anime"}]')
    if isinstance(value, list | tuple):
        return tuple(_lora_item(item) for item in value)
    return value


# a Request field: LoRA picks as NAME[:SCALE] strings or objects
LoraPicks = Annotated[tuple[LoraPick, ...], BeforeValidator(_lora_items)]


MAX_REQUEST_ADAPTERS = 8  # adapters kept loaded for requests; the oldest is dropped past this


_CHECKED: dict[str, Checked] = {}  # file sha256 -> its report against Z-Image (no tensors)


def lora_digest(path: Path, partial: bool = False) -> str:
    """The digest of a LoRA file's converted tensors (memoised by the file's sha256): the
    content identity of a LoRA whatever its layout. A file with keys Z-Image cannot take is
    refused here (listed) unless ``partial``, before any adapter is looked up."""
    from zturbo.engine.lora_layouts import load_conversion  # torch
    from zturbo.engine.lora_report import Checked, fit, require_applicable

    file_sha = file_sha256(path)
    try:
        if file_sha not in _CHECKED:
            checked = fit(load_conversion(path), path.name, None)
            _CHECKED[file_sha] = Checked({}, checked.report, checked.skipped)
        require_applicable(_CHECKED[file_sha], partial)
    except ZTurboError as exc:
        raise ZTurboError(f"cannot load LoRA {path.stem!r}: {exc}") from None
    return _CHECKED[file_sha].report.digest


def describe_loras(lora_dirs: list[str]) -> list[dict[str, Any]]:
    """``[{name, report} | {name, error}]`` for every LoRA in ``lora_dirs``: the report of
    ``lora_report`` (against Z-Image's module names), or why the file cannot be used."""
    out: list[dict[str, Any]] = []
    for name in list_loras(lora_dirs):
        try:
            path = resolve_lora(name, lora_dirs)
            lora_digest(path, partial=True)
            out.append({"name": name, "report": _CHECKED[file_sha256(path)].report.to_json()})
        except ZTurboError as exc:
            out.append({"name": name, "error": str(exc)})
    return out


def find_pick(pick, lora_dirs: list[str]) -> Path:
    """The file of one pick: by content when it names a sha256, else by name."""
    if pick.sha256 is not None:
        return lora_by_content(pick.sha256, pick.name, lora_dirs)
    return resolve_lora(pick.name, lora_dirs)


def pick_loras(picks, lora_dirs: list[str], partial: bool = False) -> tuple:
    """Request LoRA picks (``LoraPick``s: make_request has checked their shape) resolved to
    files in ``lora_dirs``, each with the digest of its converted tensors (the teleport key
    follows content, not names nor the layout the file is in). A pick with a sha256 keeps
    it: only a file with that content serves it."""
    out = []
    for pick in picks:
        path = find_pick(pick, lora_dirs)
        sha = lora_digest(path, partial)
        skipped = tuple(s["key"] for s in _CHECKED[file_sha256(path)].skipped)
        out.append(pick.model_copy(update={"sha256": sha, "skipped": skipped}))
    return tuple(out)


@dataclass
class LoraRegistry:
    """One engine's per-request LoRAs: the adapters loaded on its transformer (least recently
    used first), how many it loaded and evicted, and the file found for each pick.

    A request names a LoRA by the digest ``make_request`` put in it (``lora_digest``: its
    converted tensors), so the file is found by content in the engine's ``lora_dirs`` and
    the folders a front end declares (``search``): a server whose settings name other
    folders than its engine's."""

    adapters: dict[str, str] = field(default_factory=dict)  # pick digest -> adapter name
    files: dict[str, Path] = field(default_factory=dict)  # pick digest -> file
    dirs: list[str] = field(default_factory=list)  # folders searched beyond the engine's
    counts: dict[str, int] = field(default_factory=lambda: {"loads": 0, "unloads": 0})

    def search(self, lora_dirs: list[str]) -> None:
        """Look for picked files in ``lora_dirs`` too."""
        self.dirs.extend(d for d in lora_dirs if d not in self.dirs)

    def file(self, pick: LoraPick, lora_dirs: list[str]) -> Path:
        """The file holding ``pick``: the one found last time while it still has the pick's
        content, else the one in the folders that has it (``lora_by_content``)."""
        sha = pick.sha256 or ""
        path = self.files.get(sha)
        if path is None or not path.is_file() or _content(path) != sha:
            path = lora_by_content(sha, pick.name, list(dict.fromkeys([*lora_dirs, *self.dirs])))
        self.files[sha] = path
        return path


def _load_request_adapter(engine: Engine, pick: LoraPick, wanted: set[str | None]) -> str:
    """The adapter name of one picked LoRA, loading it (and evicting an adapter no pick of
    this request uses) on first use. A failed load leaves no partial adapter behind."""
    pipe = engine.pipe
    registry = engine.lora_registry
    loaded = registry.adapters
    sha = pick.sha256 or ""
    if sha in loaded:
        loaded[sha] = loaded.pop(sha)  # most recently used goes last
        return loaded[sha]
    path = registry.file(pick, engine.settings.lora_dirs)
    adapter = f"req_{sha[:16]}"
    checked = load_checked(pipe, path, adapter, engine.settings.lora_partial)
    if checked.report.digest != sha:  # rewritten between the search and the load
        _drop_adapter(pipe, adapter)
        raise ZTurboError(f"LoRA {pick.name!r} changed while it was being loaded: try again")
    loaded[sha] = adapter
    counts = registry.counts
    counts["loads"] += 1
    # evict the least recently used adapters, never one this request picked
    while len(loaded) > MAX_REQUEST_ADAPTERS:
        victim = next(s for s in loaded if s not in wanted)
        _drop_adapter(pipe, loaded.pop(victim))
        counts["unloads"] += 1
    return adapter


def adapter_counts(engine: Engine) -> dict[str, int]:
    """How many request adapters this engine has loaded and unloaded (evicted) so far; the
    engine lock guards them like the adapters."""
    return engine.lora_registry.counts


def _drop_adapter(pipe, adapter: str) -> None:
    """Delete an adapter from the transformer if it is (even partly) there."""
    if adapter in (getattr(pipe.transformer, "peft_config", None) or {}):
        with BUILD_LOCK:
            pipe.delete_adapters(adapter)


def _restore_adapters(engine: Engine) -> None:
    """The engine's own adapter state: its unfused engine-level LoRAs (GGUF) on with their
    scales, or every adapter off."""
    pipe = engine.pipe
    if not getattr(pipe.transformer, "peft_config", None):
        return  # no adapter was ever loaded: nothing to switch off
    own = _own_adapters(engine)
    if own:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in own], adapter_weights=[w for _, w in own])
    else:
        pipe.disable_lora()


def _own_adapters(engine: Engine) -> list[tuple[str, float]]:
    """Engine-level LoRAs that stay unfused (GGUF): active adapters of the engine itself."""
    return [(f"lora{i}", e["scale"]) for i, e in enumerate(engine.extras.get("loras", []))
            if not e.get("fused", True)]


@contextlib.contextmanager
def request_loras(engine: Engine, picks) -> Iterator[None]:
    """Activate a request's LoRAs (unfused peft adapters) for one generation, then restore
    the engine's own adapter state, on every path: a load, a check or ``set_adapters``
    failing part-way restores it too. The engine lock must be held: adapters live on the
    shared transformer.

    A pick with scale 0 is exactly the base model: it is not loaded at all (and the
    teleport key drops it, ``caches.keys``)."""
    active = [p for p in picks if p.scale != 0]
    if not active:
        yield
        return
    pipe = engine.pipe
    wanted = {p.sha256 for p in active}
    try:
        names = [_load_request_adapter(engine, pick, wanted) for pick in active]
        own = _own_adapters(engine)
        pipe.enable_lora()
        pipe.set_adapters(names + [n for n, _ in own],
                          adapter_weights=[p.scale for p in active] + [w for _, w in own])
        yield
    finally:
        _restore_adapters(engine)


def check_readable(picks, lora_dirs: list[str]) -> None:
    """Refuse a picked LoRA whose file has no readable safetensors header (the message a
    load would give), so a server refuses it before it queues a job. What the header
    names is checked against the transformer at load."""
    from safetensors import safe_open  # lazy: keeps CLI start fast

    for pick in picks:
        path = resolve_lora(pick.name, lora_dirs)  # where make_request found it
        try:
            with safe_open(str(path), framework="pt") as handle:
                if not list(handle.keys()):
                    raise ValueError("the file holds no tensors")
        except LOAD_ERRORS as exc:
            raise ZTurboError(f"cannot load LoRA {pick.name!r}: {exc}") from None
