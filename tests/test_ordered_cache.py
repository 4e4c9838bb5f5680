"""The in-flight self-attention cache kept in the order articles began: runs, moves, reorders, attention."""

from __future__ import annotations

import numpy as np
import torch

from model.architecture.blocks import Attention
from model.config import BertConfig
from model.generation import KVCache
from model.generation.ordered_cache import OrderedCache, runs

G, M = 2, 9  # rows per article, positions


def test_runs_cover_the_rows_and_window_each_run_by_its_oldest():
    ages = np.array([9, 9, 8, 5, 4, 4, 1])
    assert runs(ages, G, cost=10 ** 6) == [(0, 14, 9)]  # a run costs more than any saving: one window
    assert runs(ages, G, cost=0) == [(0, 4, 9), (4, 6, 8), (6, 8, 5), (8, 12, 4), (12, 14, 1)]
    # (9, 9, 8) | (5, 4, 4, 1): 3 * 2 * 9 + 4 * 2 * 5 + 2 * 10 = 114, against 136 in one run and 116 with the
    # 1 apart (it saves 2 * (5 - 1) positions, less than a run costs)
    assert runs(ages, G, cost=10) == [(0, 6, 9), (6, 14, 5)]


def filled(places: int, blocks: int) -> tuple[OrderedCache, torch.Tensor]:
    """An OrderedCache whose place p, row r, position t holds the value 1000 p + 100 r + t (keys; values negated)."""
    cache = OrderedCache(KVCache(1, blocks * G, 1, M, 1, torch.float32, "cpu"), places, blocks, G)
    want = (1000 * torch.arange(places)[:, None, None] + 100 * torch.arange(G)[None, :, None]
            + torch.arange(M)[None, None, :]).float().reshape(places * G, M)
    cache.k[0, :places * G, 0, :, 0] = want
    cache.v[0, :places * G, 0, :, 0] = -want
    return cache, want


def held(cache: OrderedCache, places: np.ndarray) -> list[list[float]]:
    """The positions each place's rows hold, read through its block."""
    out = []
    for p in places:
        for r in range(G):
            row = int(cache.rows[p * G + r])
            assert torch.equal(cache.v[0, row, 0, :, 0], -cache.k[0, row, 0, :, 0])
            out.append(cache.k[0, row, 0, :cache.ages[p], 0].tolist())
    return out


def test_refills_close_holes_keep_each_places_positions_and_the_order_articles_began():
    cache, want = filled(5, 8)
    ages = np.array([7, 6, 5, 3, 2])  # places began in order 0..4
    cache.prepare(ages)
    before = held(cache, np.arange(5))
    cache.refill(np.array([1, 3]))  # places 1 and 3 take new articles
    assert cache.ages.tolist() == [7, 0, 5, 0, 2]
    assert held(cache, np.array([0, 2, 4])) == [before[i] for i in (0, 1, 4, 5, 8, 9)]
    blocks = cache.block.tolist()
    assert sorted(blocks) == list(range(min(blocks), min(blocks) + 5))  # contiguous
    assert blocks[0] < blocks[2] < blocks[4] < min(blocks[1], blocks[3])  # survivors oldest first, then newcomers
    order = cache.order.tolist()  # the step's rows in cache order: row p * G + r of place p at its block
    assert [order[(b - min(blocks)) * G] // G for b in sorted(blocks)] == list(np.argsort(blocks))


def test_compaction_renumbers_places_and_beam_reorders_stay_within_each_block():
    cache, want = filled(4, 6)
    cache.prepare(np.array([6, 5, 4, 2]))
    before = held(cache, np.arange(4))
    # places 1 and 3 finished: new place 0 continues old place 2 (its beams swapped), new place 1 old place 0
    rows = torch.tensor([2 * G + 1, 2 * G, 0, 1])
    cache.reorder(rows, 6)
    assert cache.ages.tolist() == [4, 6]
    assert held(cache, np.arange(2)) == [before[5], before[4], before[0], before[1]]


def test_segments_attend_as_one_masked_window():
    torch.manual_seed(0)
    attn = Attention(BertConfig(hidden_size=16, num_attention_heads=2)).eval()
    places = 4
    cache = OrderedCache(KVCache(1, 6 * G, 2, M, 8, torch.float32, "cpu"), places, 6, G)
    cache.k.normal_()
    cache.v.normal_()
    cache.prepare(np.array([7, 6, 4, 4]))
    cache.refill(np.array([1]))  # place 1 now holds the youngest article: blocks out of place order
    ages = np.array([8, 1, 5, 5])
    cache.prepare(ages)
    position = torch.from_numpy(np.repeat(ages - 1, G))
    q, k, v = attn.project_qkv(torch.randn(places * G, 1, 16))
    with torch.inference_mode():
        keys, values = cache.at_position(position)(0, k, v)
        got = attn(q, keys, values, cache.self_mask(position))
        plain_k, plain_v = keys[cache.order.argsort()], values[cache.order.argsort()]  # back in place order
        mask = (torch.arange(M) <= position[:, None])[:, None, None, :]
        want = attn(q, plain_k, plain_v, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert [w for _, _, w in cache.runs][0] == 8 and len(cache.runs) >= 1
