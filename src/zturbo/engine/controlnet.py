"""ControlNet-Union for Z-Image: loading one beside the model, and feeding its hints into
every DiT pass.

diffusers' ``ZImageControlNetPipeline`` runs, per pass, ``controlnet(x, t, cap_feats,
control_context, conditioning_scale=scale)`` and hands the returned block samples to the
transformer (``controlnet_block_samples``). Here that is a diffusers ``ModelHook`` on the
shared transformer for one denoise call (the engine lock is held, as for DyPE and SLG),
so the txt2img denoise runs unchanged around it; the control context itself
(``generation.control``) is data made once per request.

A ControlNet comes as a diffusers folder (``config.json`` + safetensors) or as the single
file alibaba-pai releases (``Z-Image-Turbo-Fun-Controlnet-Union*.safetensors``). The
single file carries no config: it is read from the tensors' shapes and the transformer's
config (the layer places spread evenly over the DiT, as the releases place them), and
the state dict goes through diffusers' own converter
(``convert_z_image_controlnet_checkpoint_to_diffusers``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zturbo.buildlock import BUILD_LOCK
from zturbo.errors import ModelUnavailable, ZTurboError
from zturbo.hashing import controlnet_identity

HOOK_NAME = "zturbo_controlnet"
EMBEDDER = "control_all_x_embedder.2-1.weight"
REFINER_GATE = "control_noise_refiner.0.before_proj.weight"  # non-zero: the 2.1 layout


class ControlNetMismatch(ZTurboError):
    """A ControlNet that does not fit the loaded model (shapes, layers, channels)."""


@dataclass(frozen=True)
class Control:
    """One request's control: the context the ControlNet reads (``[1, C, 1, H, W]``, the
    VAE latents of the map, plus mask and masked image for inpaint) and its scale."""

    context: torch.Tensor
    scale: float


def _layer_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor], transformer_config: Any) -> dict[str, Any]:
    """The diffusers config of a single-file ControlNet for this transformer: control input
    channels and width from the patch embedder, layer counts from the keys, places spread
    evenly over the DiT (0, L/n, 2L/n...: the releases' 0,5,...,25 and 0,2,...,28), the
    refiner variant from the keys (diffusers' own rule: a non-zero refiner gate is 2.1)."""
    if EMBEDDER not in state:
        raise ControlNetMismatch(f"not a Z-Image ControlNet: no {EMBEDDER} tensor")
    dim, patch_in = state[EMBEDDER].shape
    control_in_dim = int(patch_in) // 4  # 2x2 patches, one frame
    layers = _layer_count(state, "control_layers")
    refiners = _layer_count(state, "control_noise_refiner")
    depth = int(transformer_config.n_layers)
    gate = state.get(REFINER_GATE)
    if gate is not None and bool(torch.any(gate != 0)):
        variant: str | None = "control_noise_refiner"
    elif control_in_dim != int(transformer_config.in_channels):
        variant = "control_layers"
    else:
        variant = None
    n_refiner = refiners or int(transformer_config.n_refiner_layers)
    places = [i * depth // layers for i in range(layers)] if layers else []
    return {
        "control_layers_places": places,
        "control_refiner_layers_places": list(range(
            layers if variant == "control_layers" else n_refiner)),
        "control_in_dim": control_in_dim, "add_control_noise_refiner": variant,
        "all_patch_size": [2], "all_f_patch_size": [1], "dim": int(dim),
        "n_refiner_layers": n_refiner, "n_heads": int(transformer_config.n_heads),
        "n_kv_heads": int(transformer_config.n_kv_heads),
        "norm_eps": float(transformer_config.norm_eps), "qk_norm": bool(transformer_config.qk_norm),
    }


def check_fits(config: dict[str, Any], transformer_config: Any) -> None:
    """Refuse a ControlNet whose width, heads, layer places or input channels do not fit
    the transformer (the hints are added to its layers' hidden states). ``config`` is its
    diffusers config; a key it lacks takes ZImageControlNetModel's default."""
    values = {"dim": 3840, "n_heads": 30, **config}
    problems = []
    for name in ("dim", "n_heads"):
        if int(values[name]) != int(getattr(transformer_config, name)):
            problems.append(f"{name} {values[name]} (the model's: "
                            f"{getattr(transformer_config, name)})")
    depth = int(transformer_config.n_layers)
    places = list(values.get("control_layers_places") or [])
    if not places or max(places) >= depth:
        problems.append(f"layer places {places} (the model's DiT has {depth} layers)")
    channels = int(transformer_config.in_channels)
    control_in = int(values.get("control_in_dim") or 0)
    if control_in not in (channels, 2 * channels + 1):
        problems.append(f"{control_in} control channels (this model takes "
                        f"{channels}, or {2 * channels + 1} for the inpaint-capable 2.x)")
    if problems:
        raise ControlNetMismatch("the ControlNet does not fit this model: "
                                 + "; ".join(problems))


def load(path: str | Path, transformer, dtype: torch.dtype):
    """A ZImageControlNetModel from a diffusers folder or a single .safetensors file,
    sharing the transformer's embedders and refiners (``from_transformer``), on the
    transformer's device, and its content identity; a clear error if it cannot load or
    does not fit."""
    from diffusers import ZImageControlNetModel  # lazy: keeps CLI start fast
    from safetensors import SafetensorError

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelUnavailable(f"controlnet {path} does not exist")
    try:
        with BUILD_LOCK:
            if path.is_dir():
                model = _from_folder(ZImageControlNetModel, path, transformer, dtype)
            elif path.suffix == ".safetensors":
                model = _from_single_file(ZImageControlNetModel, path, transformer, dtype)
            else:
                raise ZTurboError(f"controlnet {path}: expected a diffusers folder or a "
                                  ".safetensors file")
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelUnavailable(f"cannot load controlnet {path}: {exc}") from None
    _own_storage(model)
    model = ZImageControlNetModel.from_transformer(model, transformer)
    model.to(device=next(transformer.parameters()).device).eval()
    return model, controlnet_identity(path)


@torch.no_grad()
def _own_storage(model) -> None:
    """Every weight in a fresh allocation of its own. ``from_pretrained`` keeps tensors in
    the storage it read them into, where the CPU kernels round a hair differently than on
    fresh memory: without this the folder and the single file of the same weights gave
    different images."""
    for param in model.parameters():
        param.data = param.data.clone()


def _from_folder(cls, path: Path, transformer, dtype: torch.dtype):
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"controlnet {path} is a folder without config.json: point "
                               "--controlnet at a diffusers ControlNet folder or a "
                               ".safetensors file")
    check_fits(cls.load_config(path), transformer.config)
    try:
        return cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except RuntimeError as exc:  # size mismatches the config did not show
        raise ControlNetMismatch(f"the ControlNet in {path} does not fit its config: "
                                 f"{str(exc).splitlines()[0]}") from None


def _from_single_file(cls, path: Path, transformer, dtype: torch.dtype):
    from diffusers.loaders.single_file_utils import (  # lazy: keeps CLI start fast
        convert_z_image_controlnet_checkpoint_to_diffusers,
    )
    from safetensors.torch import load_file

    state = load_file(path)
    config = infer_config(state, transformer.config)
    check_fits(config, transformer.config)
    state = convert_z_image_controlnet_checkpoint_to_diffusers(state, config)
    model = cls.from_config(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ControlNetMismatch(f"controlnet {path.name} does not fit this model: "
                                 f"{str(exc).splitlines()[0]}") from None
    return model.to(dtype)


@functools.cache
def _hook_class():
    from diffusers.hooks import ModelHook  # lazy: keeps CLI start fast

    class ControlHook(ModelHook):
        """Each DiT forward first runs the ControlNet on the same inputs and passes its
        block samples on, as ZImageControlNetPipeline's loop does."""

        def __init__(self, controlnet, control: Control):
            super().__init__()
            self.controlnet, self.control = controlnet, control

        def new_forward(self, module, x, t, cap_feats, *args, **kwargs):
            context = self.control.context.to(x[0].device)
            samples = self.controlnet(x, t, cap_feats, context.repeat(len(x), 1, 1, 1, 1),
                                      conditioning_scale=self.control.scale)
            return self.fn_ref.original_forward(x, t, cap_feats, *args,
                                                controlnet_block_samples=samples, **kwargs)

    return ControlHook


@contextmanager
def applied(transformer, controlnet, control: Control | None) -> Iterator[None]:
    """The ControlNet's hints in every forward of ``transformer`` inside the block (nothing
    when ``control`` is None)."""
    if control is None:
        yield
        return
    from diffusers.hooks import HookRegistry  # lazy: keeps CLI start fast

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_hook_class()(controlnet, control), HOOK_NAME)
    try:
        yield
    finally:
        registry.remove_hook(HOOK_NAME, recurse=False)
