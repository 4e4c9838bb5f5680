"""Packed CPU linears and the self-attention cache: values, batch invariance, staleness, copies."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from model.architecture.blocks import Attention
from model.architecture.packing import ONEDNN, Linear
from model.config import BertConfig
from model.generation import KVCache
from model.generation.kv_cache import shared_prefix

needs_onednn = pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")


def seeded_linear(n_in: int = 48, n_out: int = 80, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(n_in, n_out).eval()


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 7, 32, 130])
def test_packed_linear_matches_f_linear_and_is_row_invariant(rows):
    layer = seeded_linear()
    x = torch.randn(rows, 1, 48)
    with torch.inference_mode():
        out = layer(x)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert layer.packed.packed is not None  # the packed path ran
        for n in (1, 2, max(1, rows // 2)):
            assert torch.equal(layer(x[:n]), out[:n])


@needs_onednn
def test_packed_linear_sees_weight_changes():
    layer = seeded_linear()
    x = torch.randn(4, 48)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2.0)  # in place: the version counter moves
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.load_state_dict({"weight": torch.zeros(80, 48), "bias": torch.ones(80)})
        assert torch.equal(layer(x), torch.ones(4, 80))
        layer.weight = torch.nn.Parameter(torch.eye(80, 48))  # a new tensor
        torch.testing.assert_close(layer(x), x @ torch.eye(80, 48).T + 1)
    assert not torch.equal(before, layer(x))


@needs_onednn
def test_stacked_qkv_projection_matches_separate_ones_and_sees_changes():
    torch.manual_seed(1)
    attn = Attention(BertConfig(hidden_size=48, num_attention_heads=4)).eval()
    x = torch.randn(6, 3, 48)

    def separate():
        return attn.q(x), attn.split_heads(attn.k(x)), attn.split_heads(attn.v(x))

    with torch.inference_mode():
        for got, want in zip(attn.project_qkv(x), separate(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        attn.k.weight.mul_(-3.0)  # one of the three stacked weights changes in place
        attn.v.bias.add_(1.0)
        for got, want in zip(attn.project_qkv(x), separate(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert attn.qkv_packed.packed is not None
    with torch.enable_grad():  # training: three autograd products, same values
        q, k, v = attn.project_qkv(x)
        assert q.requires_grad and torch.equal(k, separate()[1])


def test_training_uses_autograd_and_copies_repack():
    layer = seeded_linear()
    x = torch.randn(4, 48)
    out = layer(x)
    assert out.requires_grad
    out.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with torch.no_grad():
            clone.weight.add_(1.0)
            torch.testing.assert_close(clone(x), F.linear(x, clone.weight, clone.bias), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_cache_reorder_gathers_and_drops_rows():
    cache = KVCache(2, 4, 3, 8, 5, torch.float32, "cpu")
    k, v = torch.randn(2, 4, 3, 6, 5), torch.randn(2, 4, 3, 6, 5)
    for layer in range(2):
        cache.at(0)(layer, k[layer], v[layer])
    rows = torch.tensor([3, 3, 0])
    cache.reorder(rows, 6)
    for layer in range(2):
        got_k, got_v = cache.at(6)(layer, torch.zeros(3, 3, 1, 5), torch.zeros(3, 3, 1, 5))
        assert torch.equal(got_k[:, :, :6], k[layer, rows]) and torch.equal(got_v[:, :, :6], v[layer, rows])


def test_cache_reorder_skips_shared_positions():
    cache = KVCache(1, 4, 2, 8, 3, torch.float32, "cpu")
    k = torch.randn(1, 4, 2, 6, 3)
    cache.at(0)(0, k[0], k[0].neg())
    rows, shared = torch.tensor([1, 1, 2, 0]), torch.tensor([6, 4, 6, 0])
    cache.reorder(rows, 6, shared)
    got_k, got_v = cache.at(6)(0, torch.zeros(4, 2, 1, 3), torch.zeros(4, 2, 1, 3))
    want = k[0].clone()
    for i in (1, 3):  # rows 0 and 2 share everything; rows 1 and 3 take rows 1 and 0 from position min(4, 0)
        want[i] = k[0, rows[i]]
    assert torch.equal(got_k[:, :, :6], want) and torch.equal(got_v[:, :, :6], want.neg())
    cache.reorder(rows, 6, torch.full((4,), 6))  # nothing to copy
    assert torch.equal(cache.k[0, :, :, :6], want)


def test_shared_prefix_counts_equal_leading_tokens_within_an_article():
    tokens = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 8], [1, 5, 9, 9], [1, 5, 6, 7]])
    # group 2: rows 0-1 are article 0, rows 2-3 article 1; new rows 0-1 stay in article 0, 2-3 read article 0
    rows = torch.tensor([1, 0, 0, 3])
    assert shared_prefix(tokens, rows, 2).tolist() == [3, 3, 0, 4]


def test_cache_reorder_of_rows_of_different_lengths_copies_only_each_rows_range():
    cache = KVCache(2, 4, 2, 8, 3, torch.float32, "cpu")
    k = torch.randn(2, 4, 2, 8, 3)
    cache.k.copy_(k)
    cache.v.copy_(k.neg())
    # row 0 takes row 2's positions 1..4, row 1 holds its article's 2 positions already, row 3 takes row 1's
    # first 3 (a just started row: 0 positions); rows whose range is empty stay as they are
    rows, shared, ends = torch.tensor([2, 1, 3, 1]), torch.tensor([1, 2, 0, 0]), torch.tensor([5, 2, 0, 3])
    cache.reorder(rows, 7, shared, ends)
    want = k.clone()
    want[:, 0, :, 1:5] = k[:, 2, :, 1:5]
    want[:, 3, :, 0:3] = k[:, 1, :, 0:3]
    assert torch.equal(cache.k, want) and torch.equal(cache.v, want.neg())
    cache.reorder(rows, 2, shared, ends)  # length caps the ranges: row 3 takes positions 0..1 again, row 0 its 1
    want[:, 0, :, 1:2] = want[:, 2, :, 1:2]
    want[:, 3, :, 0:2] = want[:, 1, :, 0:2]
    assert torch.equal(cache.k, want)
