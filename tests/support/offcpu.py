"""A tensor that says it lives on another device while its data stays on the CPU: the way
to exercise host/device crossings on a machine without a GPU.

The claimed device is ``meta`` by default: a CPU-only torch build refuses to index a tensor
that claims ``cuda`` (its device guard needs the CUDA runtime), while ``meta`` goes through
every op like a GPU device would and, like it, is not the host.

Every torch op unwraps it, runs on the CPU data and wraps the result again (same claimed
device), except an explicit copy to the CPU (``.to("cpu")``, ``.cpu()``), which returns a
plain CPU tensor. ``.numpy()`` refuses it, as torch refuses a real CUDA tensor, so code
that reads device bytes without crossing to the host first fails here as it would on a GPU.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map


class OffCpu(torch.Tensor):
    @staticmethod
    def __new__(cls, inner: torch.Tensor, device: str = "meta"):
        return torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
            device=torch.device(device), requires_grad=False)

    def __init__(self, inner: torch.Tensor, device: str = "meta"):
        self.inner = inner

    def __repr__(self) -> str:
        return f"OffCpu({self.inner!r}, device={self.device})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        claimed = [None]

        def unwrap(x):
            if isinstance(x, OffCpu):
                claimed[0] = x.device
                return x.inner
            return x

        args, kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs or {})
        if func is torch.ops.aten._to_copy.default and "device" in kwargs:
            target = torch.device(kwargs.pop("device"))
            out = func(*args, **kwargs)
            return out if target.type == "cpu" else OffCpu(out, str(target))
        out = func(*args, **kwargs)
        return tree_map(lambda x: OffCpu(x, str(claimed[0])) if isinstance(x, torch.Tensor) else x,
                        out)


def off_cpu(t: torch.Tensor, device: str = "meta") -> OffCpu:
    """``t``'s values on a pretend ``device``."""
    return OffCpu(t.detach().clone(), device)
