"""The cross-attention keys and values of the articles being decoded, in buffers allocated once per batch."""

from __future__ import annotations

import torch

from .decode_steps import MemoryKV


def move_rows_(t: torch.Tensor, live: torch.Tensor, chunk: int | None) -> None:
    """Rows live[i] of t move to row i, in place; live is increasing, so live[i] >= i and a row is read before
    any chunk writes over it. chunk bounds the temporary copy (None: one copy of all live rows)."""
    step = live.shape[0] if chunk is None else chunk
    for start in range(0, live.shape[0], max(step, 1)):
        idx = live[start:start + step]
        t[start:start + idx.shape[0]] = t.index_select(0, idx)


class CrossKVBuffers:
    """The per-article cross-attention keys/values and padding mask ([n, ...] rows of buffers allocated
    once per batch: compaction moves rows within them, so the addresses a CUDA graph captured stay valid)."""

    def __init__(self, kv: MemoryKV, mask: torch.Tensor | None, rows: int):
        def padded(t: torch.Tensor) -> torch.Tensor:  # extra rows repeat article 0: finite and never emitted
            extra = rows - t.shape[0]
            return t if extra == 0 else torch.cat((t, t[:1].expand(extra, *t.shape[1:])))
        self.kv_buffers = [(padded(k), padded(v)) for k, v in kv]
        self.mask_buffer = padded(mask) if mask is not None else None
        self.kv, self.mask = self.kv_buffers, self.mask_buffer

    def keep(self, live: torch.Tensor, rows: int, chunk: int | None) -> None:
        """Move the articles at `live` to the first rows and keep `rows` rows (the live ones, then padding)."""
        for t in (*(t for kv in self.kv_buffers for t in kv), self.mask_buffer):
            if t is not None:
                move_rows_(t, live, chunk)
        self.kv = [(k[:rows], v[:rows]) for k, v in self.kv_buffers]
        self.mask = None if self.mask_buffer is None else self.mask_buffer[:rows]

    def write(self, places: torch.Tensor, kv: MemoryKV, mask: torch.Tensor) -> None:
        """New articles' keys/values ([f, H, w, D]) and mask ([f, 1, 1, w]) at `places`; w may be narrower than
        the buffers, whose positions past it are masked."""
        w = mask.shape[-1]
        for (k_buf, v_buf), (k, v) in zip(self.kv_buffers, kv, strict=True):
            k_buf[places, :, :w] = k
            v_buf[places, :, :w] = v
        self.mask_buffer[places] = False
        self.mask_buffer[places, :, :, :w] = mask

    def view(self, width: int) -> tuple[MemoryKV, torch.Tensor | None]:
        """The rows in use seen through their first `width` input positions."""
        kv = [(k[:, :, :width], v[:, :, :width]) for k, v in self.kv]
        return kv, None if self.mask is None else self.mask[..., :width]
