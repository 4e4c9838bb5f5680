"""What generation needs from a model (`Seq2Seq`), and the one-token decode steps it calls.

Generation depends on this narrow interface only, never on the model class, so the model can offer
`generate` without the two modules importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ..config import EncoderDecoderConfig, GenerationConfig
from .kv_cache import KVCache

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]

# (tokens [N, 1], memory_kv, memory_mask, cache, pos, group) -> float logits [N, V]; pos is one position for
# every row, or (in-flight batching, static steps only) an [N] tensor of each row's own
DecodeStep = Callable[[torch.Tensor, MemoryKV, "torch.Tensor | None", KVCache, "int | torch.Tensor", int],
                      torch.Tensor]


class Seq2Seq(Protocol):
    config: EncoderDecoderConfig
    generation_config: GenerationConfig

    @property
    def device(self) -> torch.device: ...

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def memory_kv(self, memory: torch.Tensor) -> MemoryKV: ...

    def new_cache(self, rows: int, max_len: int) -> KVCache: ...

    def decode(self, decoder_input_ids: torch.Tensor, memory_kv: MemoryKV, memory_mask: torch.Tensor | None,
               decoder_attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               pos: int = 0, group: int = 1) -> torch.Tensor: ...

    def decode_static(self, tokens: torch.Tensor, memory_kv: MemoryKV, memory_mask: torch.Tensor | None,
                      cache: KVCache, position: torch.Tensor, group: int = 1) -> torch.Tensor: ...


def decode_step(model: Seq2Seq) -> DecodeStep:
    """The default one-token step; pass another step to generate to change how it runs."""
    def step(tokens, memory_kv, memory_mask, cache, pos, group):
        return model.decode(tokens, memory_kv, memory_mask, cache=cache, pos=pos, group=group)[:, -1].float()
    return step


def static_decode_step(model: Seq2Seq, wrap: Callable[[Callable], Callable] | None = None) -> DecodeStep:
    """A one-token step whose shapes do not change from one position to the next (only with the row count).

    The position reaches the model as a [1] tensor (or [N], one per row), kept and updated in place, and every
    layer attends over the whole preallocated cache under a mask, so `wrap` (for example
    `lambda f: torch.compile(f, mode="reduce-overhead")`, which captures CUDA graphs) compiles or captures
    the core once per row count instead of once per position.
    """
    def core(tokens, memory_kv, memory_mask, cache, position, group):
        return model.decode_static(tokens, memory_kv, memory_mask, cache, position, group)[:, -1].float()

    core = wrap(core) if wrap is not None else core
    positions: dict[tuple[torch.device, int], torch.Tensor] = {}

    def step(tokens, memory_kv, memory_mask, cache, pos, group):
        count = 1 if isinstance(pos, int) else pos.shape[0]  # one position for all rows, or one per row
        position = positions.get((tokens.device, count))
        if position is None:
            position = positions[tokens.device, count] = torch.zeros(count, dtype=torch.long, device=tokens.device)
        if isinstance(pos, int):
            position.fill_(pos)  # no host synchronisation: a fill with a scalar argument
        else:
            position.copy_(pos)
        if wrap is not None:  # CUDA graphs then read the cache, cross K/V, mask and position in place
            static = (position, cache.k, cache.v, *(t for kv in memory_kv for t in kv), memory_mask)
            for t in static:
                if t is not None:
                    torch._dynamo.mark_static_address(t)
        return core(tokens, memory_kv, memory_mask, cache, position, group)
    return step


def compiled_decode_step(model: Seq2Seq) -> DecodeStep:
    """The static step under torch.compile: CUDA graphs on a GPU (one per row count: run it under the "gpu"
    decode policy, whose row buckets bound the counts), Inductor's code on a CPU."""
    mode = "reduce-overhead" if model.device.type == "cuda" else None
    return static_decode_step(model, lambda f: torch.compile(f, mode=mode, dynamic=False))
