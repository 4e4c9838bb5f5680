"""Where and in what precision a model loads: transformers' from_pretrained keywords (dtype, device_map)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DeviceMap = str | int | torch.device | dict | None


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype, its name, or None / "auto": the dtype the weights are stored in."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be a torch dtype, 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def placement(device: torch.device | str | None, device_map: DeviceMap) -> torch.device | None:
    """The one device to load on: `device`, or transformers' device_map ("auto": the GPU when there is one)."""
    if device_map is None:
        return None if device is None else torch.device(device)
    if device is not None:
        raise ValueError("pass device or device_map, not both")
    if isinstance(device_map, dict):
        raise ValueError("a per-module device_map is not supported: the model loads whole on one device "
                         "(device_map='auto', 'cpu', 'cuda:0' or a device index)")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = torch.device(f"cuda:{device_map}" if isinstance(device_map, int) else device_map)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device_map={device_map!r}: torch sees no CUDA device")
    return target


def run_device(device: torch.device | str | int | None = "auto") -> torch.device:
    """Where a pipeline runs: "auto" (or None) the GPU when there is one, an index a CUDA device (-1: the CPU)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int):
        return torch.device("cpu" if device < 0 else f"cuda:{device}")
    return torch.device(device)


def run_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """What a job or pipeline computes in: "auto" (or None) is bfloat16 on a GPU and float32 on a CPU."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return resolve_dtype(dtype)
