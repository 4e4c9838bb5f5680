"""CPU linears on oneDNN's packed weights: nn.Linear's parameters and state dict, about twice as fast for the
few rows of a decode step, and batch-invariant."""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default if ONEDNN else None


class PackedWeight:
    """A weight reordered into oneDNN's blocked layout, for CPU inference (what torch.compile's CPU backend does).

    For the few rows of a decode step its matmul runs about twice as fast as F.linear's, and a row's result
    does not depend on the other rows (F.linear's does below 8 rows), which keeps generation batch-invariant.
    Several weights are stacked into one product (the self-attention's queries, keys and values). Repacked
    when a weight is replaced or changed in place (its version counter moves); a change made through
    `.data` bypasses that counter and is not seen.
    """

    def __init__(self):
        self.key, self.storages, self.packed = None, (), None

    def __call__(self, *weights: torch.Tensor) -> torch.Tensor:
        key = tuple((w.data_ptr(), w._version) for w in weights)
        if key != self.key:
            weight = weights[0] if len(weights) == 1 else torch.cat(weights)
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32)
            # holding the storages keeps their addresses from being reused by other weights
            self.storages, self.key = tuple(w.untyped_storage() for w in weights), key
        return self.packed

    def __getstate__(self):  # never pickled or deep-copied: the copy repacks on first use
        return {}

    def __setstate__(self, state):
        self.__init__()


def packable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight runs on a PackedWeight: float32 CPU inference (no autograd) where oneDNN is there.

    Not while torch.compile traces: its CPU backend packs weights itself (with freezing)."""
    return (ONEDNN and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not weight.is_inference())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: PackedWeight) -> torch.Tensor:
    """F.linear, on a packed weight when `packable`."""
    if packable(x, weight):
        return LINEAR_POINTWISE(x, packed(weight), bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) whose CPU inference runs on a PackedWeight."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.packed = PackedWeight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)
