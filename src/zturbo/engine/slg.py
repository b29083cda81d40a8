"""Skip-layer guidance (SLG): push the prediction away from a copy of itself made with some
DiT layers skipped, on a window of the steps.

Introduced with Stable Diffusion 3.5 (and diffusers' ``SkipLayerGuidance``): where active,

    pred = pred_cond + scale * (pred_cond - pred_cond_skip)

where ``pred_cond_skip`` is a second forward of the conditional input with the chosen
layers of ``transformer.layers`` passed through unchanged. Step i of N is active when
``start <= i / N < stop``. With guidance > 0 the term is added to the conditional
prediction before the pipeline's CFG mix. The window is placed on the full trajectory's
step numbers, so a resumed (teleported) run stays exact.

diffusers' own ``apply_layer_skip`` cannot skip a whole Z-Image block in 0.42.1 (its
block-skip hook looks up an argument called ``hidden_states``; Z-Image's is ``x``), so
the skip here is a small diffusers ``ModelHook`` that returns the block's input.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from zturbo.errors import ZTurboError

DEFAULT_LAYERS = (7, 8, 9)  # tuned for Z-Image-Turbo's 30-layer DiT
REFERENCE_DEPTH = 30
HOOK_NAME = "zturbo_slg"
SKIP_HOOK_NAME = "zturbo_slg_skip"


@dataclass(frozen=True)
class SLG:
    scale: float
    layers: tuple[int, ...] = DEFAULT_LAYERS
    start: float = 0.01
    stop: float = 0.2

    @classmethod
    def from_request(cls, request) -> SLG | None:
        if not request.slg_scale:
            return None
        return cls(request.slg_scale, tuple(request.slg_layers), request.slg_start,
                   request.slg_stop)

    def active(self, step: int, total: int) -> bool:
        return self.start <= step / total < self.stop

    def extra_forwards(self, total: int) -> int:
        """Transformer forwards SLG adds to a ``total``-step run (one per active step)."""
        return sum(self.active(step, total) for step in range(total))


def fitted_layers(layers: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """The default layers moved to the same relative depth of a ``depth``-layer DiT
    (floor(i * depth / 30)); other layers unchanged (out of range stays an error)."""
    if tuple(layers) != DEFAULT_LAYERS or max(layers) < depth:
        return tuple(layers)
    return tuple(sorted({i * depth // REFERENCE_DEPTH for i in layers}))


def fit_request(request, transformer):
    """``(request, warnings)``: SLG's default layers fitted to this DiT, with a note.

    The adapted layers go into the Request, so the PNG metadata and every cache key name
    the layers that actually ran."""
    if not request.slg_scale:
        return request, []
    depth = len(transformer.layers)
    layers = fitted_layers(request.slg_layers, depth)
    if layers == tuple(request.slg_layers):
        return request, []
    note = (f"slg_layers {','.join(map(str, request.slg_layers))} (the default, for a "
            f"{REFERENCE_DEPTH}-layer DiT) used as {','.join(map(str, layers))} on this "
            f"{depth}-layer DiT")
    return request.model_copy(update={"slg_layers": layers}), [note]


@functools.cache
def _hook_classes():
    from diffusers.hooks import ModelHook  # lazy: keeps CLI start fast

    class SkipBlock(ModelHook):
        """The block's output is its input: the layer is skipped."""

        def new_forward(self, module, x, *args, **kwargs):
            return x

    class SLGHook(ModelHook):
        """Counts steps; on active ones adds the skip-layer term to the conditional output."""

        def __init__(self, slg: SLG, first_step: int, total: int):
            super().__init__()
            self.slg, self.step, self.total = slg, first_step, total

        def new_forward(self, module, x, t, cap_feats, *args, **kwargs):
            step, self.step = self.step, self.step + 1
            out = self.fn_ref.original_forward(x, t, cap_feats, *args, **kwargs)
            if not self.slg.active(step, self.total):
                return out
            with _layers_skipped(module, self.slg.layers, SkipBlock):
                skipped = self.fn_ref.original_forward(x[:1], t[:1], cap_feats[:1], *args, **kwargs)
            cond = _samples(out)
            cond[0] = cond[0] + self.slg.scale * (cond[0] - _samples(skipped)[0])
            return out

    return SkipBlock, SLGHook


def _samples(out):
    """The list of per-image outputs of a Z-Image forward (tuple or output object)."""
    return out[0] if isinstance(out, tuple) else out.sample


@contextmanager
def _layers_skipped(transformer, layers: tuple[int, ...], skip_hook) -> Iterator[None]:
    from diffusers.hooks import HookRegistry  # lazy: keeps CLI start fast

    registries = [HookRegistry.check_if_exists_or_initialize(transformer.layers[i])
                  for i in layers]
    for registry in registries:
        registry.register_hook(skip_hook(), SKIP_HOOK_NAME)
    try:
        yield
    finally:
        for registry in registries:
            registry.remove_hook(SKIP_HOOK_NAME, recurse=False)


@contextmanager
def applied(transformer, slg: SLG | None, first_step: int, total: int) -> Iterator[None]:
    """SLG on ``transformer`` inside the block (nothing when ``slg`` is None)."""
    if slg is None:
        yield
        return
    n = len(transformer.layers)
    bad = [i for i in slg.layers if i >= n]
    if bad:
        raise ZTurboError(f"slg_layers {', '.join(map(str, bad))} out of range: this DiT has "
                          f"{n} layers (0..{n - 1})")
    from diffusers.hooks import HookRegistry  # lazy: keeps CLI start fast

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_hook_classes()[1](slg, first_step, total), HOOK_NAME)
    try:
        yield
    finally:
        registry.remove_hook(HOOK_NAME, recurse=False)
