"""Our forward pass and loss against transformers' EncoderDecoderModel on the same weights."""

import pytest
import torch
import transformers

from model import EncoderDecoderModel, Tokenizer
from tests.helpers import MINILM, ours_from_hf, padded_batch, tiny_hf

CASES = [
    ("bert", 32, 32, "gelu"),
    ("bert", 48, 32, "gelu_new"),
    ("bert-generation", 32, 32, "gelu"),
    ("bert-generation", 32, 48, "relu"),
    ("bert", 32, 48, "gelu_pytorch_tanh"),
]


def compare(ours, hf, input_ids, attention_mask, labels):
    with torch.no_grad():
        a = ours(input_ids, attention_mask, labels=labels)
        b = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert a.logits.shape == b.logits.shape
    assert (a.logits - b.logits).abs().max().item() <= 1e-4
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5
    return a


@pytest.mark.parametrize("kind,enc_hidden,dec_hidden,act", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_configs_match_transformers(tmp_path, kind, enc_hidden, dec_hidden, act, seed):
    hf = tiny_hf(kind.replace("bert-generation", "gen"), enc_hidden, dec_hidden, seed, act)
    ours = ours_from_hf(hf, tmp_path)
    assert (ours.enc_to_dec_proj is not None) == (enc_hidden != dec_hidden)
    input_ids, mask = padded_batch(99, [7, 12, 3], seed)
    labels, label_mask = padded_batch(99, [5, 2, 9], seed + 10)
    labels = labels.masked_fill(label_mask == 0, -100)
    compare(ours, hf, input_ids, mask, labels)
    dec_ids, dec_mask = padded_batch(99, [4, 6, 1], seed + 20)
    with torch.no_grad():
        a = ours(input_ids, mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask).logits
        b = hf(input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec_ids,
               decoder_attention_mask=dec_mask).logits
    assert (a - b).abs().max().item() <= 1e-4


def test_minilm_warm_start_matches_transformers(tmp_path):
    ours = EncoderDecoderModel.from_encoder_decoder_pretrained(MINILM, MINILM)
    assert (ours.config.decoder_start_token_id, ours.config.pad_token_id, ours.config.eos_token_id) == (101, 0, 102)
    hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(MINILM), str(MINILM)).eval()
    # the fresh cross-attention and LM-head transform are random on both sides: give HF ours
    ours.save_pretrained(tmp_path)
    hf = transformers.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    ref = transformers.BertModel.from_pretrained(str(MINILM))
    assert torch.equal(hf.encoder.encoder.layer[3].output.dense.weight, ref.encoder.layer[3].output.dense.weight)
    assert torch.equal(hf.decoder.bert.encoder.layer[5].attention.self.query.weight,
                       ref.encoder.layer[5].attention.self.query.weight)
    tok = Tokenizer.from_pretrained(MINILM)
    enc = tok(["The cat sat on the mat, and then it slept.", "Short one.", "A third, longer article about Ray."])
    lab = tok(["cat sleeps", "short", "an article about ray data and train"])
    labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
    out = compare(ours, hf, enc["input_ids"], enc["attention_mask"], labels)
    assert out.loss.item() > 1.0


def test_missing_start_or_pad_is_a_clear_error(tmp_path):
    hf = tiny_hf()
    ours = ours_from_hf(hf, tmp_path)
    ids, mask = padded_batch(99, [4, 4])
    ours.config.decoder_start_token_id = None
    with pytest.raises(ValueError, match="decoder_start_token_id is not set"):
        ours(ids, mask, labels=ids)
    ours.config.decoder_start_token_id, ours.config.pad_token_id = 1, None
    with pytest.raises(ValueError, match="pad_token_id is not set"):
        ours(ids, mask, labels=ids)


def test_random_init_follows_transformers_rules():
    hf = tiny_hf(enc_hidden=32, dec_hidden=48)
    from model import EncoderDecoderConfig

    ours_config = EncoderDecoderConfig.from_dict(hf.config.to_dict())
    torch.manual_seed(0)
    ours = EncoderDecoderModel(ours_config)
    emb = ours.decoder.embed.tok.weight
    assert torch.all(emb[0] == 0)
    assert abs(emb[1:].std().item() - 0.02) < 0.002
    assert torch.all(ours.encoder.layers[0].attn.q.bias == 0)
    assert torch.all(ours.decoder.layers[1].cross.norm.weight == 1)
    assert torch.all(ours.lm_head.bias == 0)
    assert abs(ours.enc_to_dec_proj.weight.std().item() - 0.02) < 0.004
