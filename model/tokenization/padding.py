"""Padding token ids into a batch: the one helper the tokenizer, generation's callers and pipeline/ share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_ids(rows: Sequence[Sequence[int]] | None, pad_id: int, flat: np.ndarray | None = None,
            lengths: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, longest] int64 ids padded with pad_id on the right, and the attention mask (1 on tokens). Rows come
    as sequences, or flat: every row's tokens end to end with each row's length (Arrow's list layout)."""
    if rows is not None:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
    width = int(lengths.max(initial=0))
    mask = np.arange(width) < lengths[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = flat
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))
