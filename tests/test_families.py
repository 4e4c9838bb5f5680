"""RoBERTa and GPT-2 in any mix, shared weights included, against transformers: logits and loss, generate
(greedy, beam, seeded sampling) under both decode policies, checkpoints both ways, transformers 4.x's
shared-weight layout."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import tempfile

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from model import EncoderDecoderModel, static_decode_step
from model.convert import convert
from tests.helpers import padded_batch

VOCAB, START, PAD, EOS = 100, 0, 1, 2  # RoBERTa's <s>, <pad>, </s>; a BERT encoder pads with 0
transformers.logging.set_verbosity_error()

# kind -> encoder type, decoder type, encoder width, decoder width, tie_encoder_decoder
KINDS = {
    "roberta2roberta": ("roberta", "roberta", 32, 32, False),
    "roberta_shared": ("roberta", "roberta", 32, 32, True),
    "bert2gpt2": ("bert", "gpt2", 32, 32, False),
    "roberta2gpt2": ("roberta", "gpt2", 32, 48, False),
    "bert2roberta": ("bert", "roberta", 48, 32, False),
}


def side(model_type: str, hidden: int, init: float, decoder: bool):
    common = dict(vocab_size=VOCAB, initializer_range=init)
    if model_type == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=2, n_head=4, n_inner=56, n_positions=64,
                                       bos_token_id=START, eos_token_id=EOS, is_decoder=decoder,
                                       add_cross_attention=decoder, scale_attn_by_inverse_layer_idx=True, **common)
    cls = transformers.RobertaConfig if model_type == "roberta" else transformers.BertConfig
    extra = dict(type_vocab_size=1, pad_token_id=PAD, bos_token_id=START, eos_token_id=EOS) \
        if model_type == "roberta" else dict(pad_token_id=0)
    return cls(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=56,
               max_position_embeddings=64, is_decoder=decoder, add_cross_attention=decoder, **extra, **common)


def hf_model(kind: str, seed: int = 0, init: float = 0.02):
    """A seeded random transformers model of `kind`, non-trivial LayerNorms and biases; a shared one holds the
    decoder base's tensors in its encoder too (transformers 5 builds them apart)."""
    enc_type, dec_type, enc_hidden, dec_hidden, tie = KINDS[kind]
    torch.manual_seed(seed)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        side(enc_type, enc_hidden, init, False), side(dec_type, dec_hidden, init, True), tie_encoder_decoder=tie)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = START, PAD, EOS
    model = transformers.EncoderDecoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        if tie:
            base = model.decoder.roberta.state_dict()
            for name, tensor in model.encoder.state_dict().items():
                if name in base:
                    tensor.copy_(base[name])
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=START, bos_token_id=START, eos_token_id=EOS, pad_token_id=PAD)
    return model


@functools.cache
def twins(kind: str, seed: int = 0, init: float = 0.02):
    hf = hf_model(kind, seed, init)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        return hf, EncoderDecoderModel.from_pretrained(tmp)


def inputs(kind: str, lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = padded_batch(VOCAB, lengths, seed)
    return ids.masked_fill(mask == 0, PAD if KINDS[kind][0] == "roberta" else 0), mask


def logits(model, ids, mask, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits


def assert_logits_equal(ours, hf, ids, mask, **kwargs):
    a, b = logits(ours, ids, mask, **kwargs), logits(hf, ids, mask, **kwargs)
    assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_loss_match_transformers(kind):
    hf, ours = twins(kind)
    ids, mask = inputs(kind, [7, 12, 3], 0)
    labels, label_mask = padded_batch(VOCAB, [5, 2, 9], 10)
    labels = labels.masked_fill(label_mask == 0, -100)
    with torch.no_grad():
        a, b = ours(ids, mask, labels=labels), hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert (a.logits - b.logits).abs().max().item() <= 1e-4
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5
    dec_ids, dec_mask = padded_batch(VOCAB, [4, 6, 1], 20)  # pads inside the decoder input: RoBERTa skips them
    dec_ids = dec_ids.masked_fill(dec_mask == 0, PAD)
    assert_logits_equal(ours, hf, ids, mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
    assert (ours.enc_to_dec_proj is not None) == (KINDS[kind][2] != KINDS[kind][3])


def up_to_eos(rows: torch.Tensor) -> list[list[int]]:
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows.tolist()]


SETTINGS = [
    dict(num_beams=1, max_length=16),
    dict(num_beams=1, max_new_tokens=12, no_repeat_ngram_size=2, repetition_penalty=1.3),
    dict(num_beams=3, max_length=16, early_stopping=True, length_penalty=2.0),
    dict(num_beams=4, max_length=14, early_stopping="never", length_penalty=0.6, num_return_sequences=2),
    dict(num_beams=3, max_length=18, early_stopping=False, no_repeat_ngram_size=2, min_length=6),
]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_matches_transformers_under_both_policies(kind):
    """initializer_range 0.5 makes the next-token distributions peaked, so float noise cannot reorder beams; the
    pad token's bias is raised so that running RoBERTa rows hold pads (positions: pad_token_id)."""
    hf, ours = twins(kind, 1, 0.5)
    if kind.endswith("roberta"):
        with torch.no_grad():
            hf.decoder.lm_head.bias[PAD] += 6.0
            ours.lm_head.bias[PAD] += 6.0
    ids, mask = inputs(kind, [7, 12, 3, 9], 1)
    for settings in SETTINGS:
        with torch.no_grad():
            want = hf.generate(input_ids=ids, attention_mask=mask, **settings)
        for policy in ("cpu", "gpu"):
            got = ours.generate(ids, mask, policy=policy, **settings)
            assert up_to_eos(got) == up_to_eos(want), (settings, policy)
        static = ours.generate(ids, mask, policy="gpu", step=static_decode_step(ours), **settings)
        assert up_to_eos(static) == up_to_eos(want), settings
    for settings in (dict(num_beams=1, num_return_sequences=3, top_k=20, temperature=0.8),
                     dict(num_beams=3, top_p=0.9)):
        for i in range(2):  # one article per search: the same rows draw from the generator as in transformers'
            torch.manual_seed(5)
            with torch.no_grad():
                want = hf.generate(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1], do_sample=True,
                                   max_length=14, **settings)
            for policy in ("cpu", "gpu"):
                got = ours.generate(ids[i:i + 1], mask[i:i + 1], do_sample=True, seed=5, max_length=14,
                                    policy=policy, **settings)
                assert up_to_eos(got) == up_to_eos(want), (settings, policy)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_both_ways(kind, tmp_path):
    hf, ours = twins(kind, 2)
    ids, mask = inputs(kind, [6, 9], 2)
    dec_ids = torch.tensor([[START, 5, 6, 7], [START, 8, 9, 10]])
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    back, info = back
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_logits_equal(back.eval(), hf, ids, mask, decoder_input_ids=dec_ids)
    for dtype in (torch.float32, torch.float16):
        stored = copy.deepcopy(hf).to(dtype)
        rounded = copy.deepcopy(stored).float()  # the reference: transformers on the stored values
        want = logits(rounded, ids, mask, decoder_input_ids=dec_ids)
        stored.save_pretrained(tmp_path / f"st-{dtype}")
        state = {k: v.contiguous() for k, v in stored.state_dict().items()}
        if KINDS[kind][1] == "gpt2":  # transformers 4.x's .bin files also hold GPT-2's causal-mask buffers
            state["decoder.transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
            state["decoder.transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
        (tmp_path / f"bin-{dtype}").mkdir()
        (tmp_path / f"bin-{dtype}" / "config.json").write_text((tmp_path / f"st-{dtype}" / "config.json").read_text())
        torch.save(state, tmp_path / f"bin-{dtype}" / "pytorch_model.bin")
        convert(str(tmp_path / f"bin-{dtype}"), str(tmp_path / f"conv-{dtype}"))
        for folder in (tmp_path / f"st-{dtype}", tmp_path / f"conv-{dtype}"):
            loaded = EncoderDecoderModel.from_pretrained(folder)
            assert loaded.dtype == dtype
            got = logits(loaded.float(), ids, mask, decoder_input_ids=dec_ids)
            assert (got - want).abs().max().item() <= 1e-4


def storage_bytes(model) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    return sum(storages.values())


def write_4x_layout(hf, folder: pathlib.Path) -> None:
    """What transformers 4.x saved for a tie_encoder_decoder model: the encoder keys the decoder's base model
    holds are absent from the file."""
    hf.save_pretrained(folder)
    absent = {f"encoder.{k}" for k in hf.decoder.roberta.state_dict()} | {
        "decoder.lm_head.decoder.weight", "decoder.lm_head.decoder.bias"}  # the LM head's tied copies
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k not in absent}
    (folder / "model.safetensors").unlink()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_encoder_decoder"] is True
    assert "encoder.encoder.layer.0.attention.self.query.weight" not in state and "encoder.pooler.dense.weight" in state


def test_shared_weights_load_from_the_4x_layout_as_one_stack(tmp_path):
    hf, _ = twins("roberta_shared", 3)
    write_4x_layout(hf, tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path)
    ids, mask = inputs("roberta_shared", [8, 5], 3)
    assert_logits_equal(ours, hf, ids, mask, decoder_input_ids=torch.tensor([[START, 4, 5], [START, 6, 7]]))
    enc, dec = ours.encoder, ours.decoder
    assert enc.layers[1].attn.q.weight.data_ptr() == dec.layers[1].attn.q.weight.data_ptr()
    assert enc.embed.tok.weight.data_ptr() == dec.embed.tok.weight.data_ptr()
    assert enc.pooler is not None and dec.layers[0].cross is not None
    one_stack = sum(p.nbytes for p in dec.parameters()) + sum(p.nbytes for p in ours.lm_head.parameters())
    assert storage_bytes(ours) == one_stack + sum(p.nbytes for p in enc.pooler.parameters())
    assert len(list(ours.parameters())) == len({p.data_ptr() for p in ours.parameters()})


def test_shared_weights_stay_shared_in_training_and_save_both_copies(tmp_path):
    hf, ours = twins("roberta_shared", 4)
    model = EncoderDecoderModel(ours.config)
    model.load_state_dict(ours.state_dict())
    model.train()
    ids, mask = inputs("roberta_shared", [6, 4], 4)
    before = model.encoder.layers[0].ffn_up.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(ids, mask, labels=torch.tensor([[5, 6, EOS], [7, EOS, -100]])).loss.backward()
    optimizer.step()
    assert not torch.equal(model.encoder.layers[0].ffn_up.weight, before)
    assert model.encoder.layers[0].ffn_up.weight is model.decoder.layers[0].ffn_up.weight
    model.eval().save_pretrained(tmp_path)
    back = transformers.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert torch.equal(back.encoder.encoder.layer[0].intermediate.dense.weight,
                       back.decoder.roberta.encoder.layer[0].intermediate.dense.weight)
    assert_logits_equal(model, back, ids, mask, decoder_input_ids=torch.tensor([[START, 9], [START, 3]]))


def test_differing_copies_of_shared_weights_are_refused(tmp_path):
    hf, _ = twins("roberta_shared", 3)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["encoder.encoder.layer.0.output.dense.bias"] += 1.0
    (tmp_path / "model.safetensors").unlink()
    save_file(state, tmp_path / "model.safetensors")
    assert config["tie_encoder_decoder"]
    with pytest.raises(ValueError, match=r"encoder\.encoder\.layer\.0\.output\.dense\.bias differs"):
        EncoderDecoderModel.from_pretrained(tmp_path)


def pretrained(folder: pathlib.Path, cls, config) -> pathlib.Path:
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("enc_cls,dec_cls", [
    ("RobertaModel", "RobertaForCausalLM"),
    ("RobertaForMaskedLM", "GPT2LMHeadModel"),
    ("BertModel", "GPT2Model"),
])
def test_warm_start_matches_transformers(enc_cls, dec_cls, tmp_path, caplog):
    def config(name):
        kind = "gpt2" if "GPT2" in name else "roberta" if "Roberta" in name else "bert"
        return side(kind, 32, 0.02, False)
    enc = pretrained(tmp_path / "enc", getattr(transformers, enc_cls), config(enc_cls))
    dec = pretrained(tmp_path / "dec", getattr(transformers, dec_cls), config(dec_cls))
    with caplog.at_level("INFO", logger="model.architecture.encoder_decoder"):
        ours = EncoderDecoderModel.from_encoder_decoder_pretrained(
            enc, dec, decoder_start_token_id=START, pad_token_id=PAD, eos_token_id=EOS)
    assert "layers.{}.cross" in caplog.text
    reference = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(enc), str(dec))
    theirs = reference.state_dict()
    ours.save_pretrained(tmp_path / "ours")
    fresh = ("crossattention", "ln_cross_attn") + (("encoder.pooler",) if "MaskedLM" in enc_cls else ())
    for key, tensor in load_file(tmp_path / "ours" / "model.safetensors").items():
        if not any(f in key for f in fresh):
            assert torch.equal(tensor, theirs[key]), key
    hf = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "ours").eval()
    ids, mask = inputs("roberta2roberta" if "Roberta" in enc_cls else "bert2roberta", [5, 7], 5)
    assert_logits_equal(ours, hf, ids, mask, decoder_input_ids=torch.tensor([[START, 3, 4], [START, 5, 6]]))


def test_gpt2_config_keys_round_trip_and_unsupported_values_are_named(tmp_path):
    hf, ours = twins("bert2gpt2")
    dec = ours.config.decoder
    assert (dec.hidden_size, dec.num_hidden_layers, dec.intermediate_size, dec.max_position_embeddings,
            dec.hidden_act, dec.layer_norm_eps) == (32, 2, 56, 64, "gelu_new", 1e-5)
    assert ours.decoder.layers[1].attn.scale == pytest.approx(8 ** -0.5 / 2)  # scale_attn_by_inverse_layer_idx
    saved = ours.config.to_dict()["decoder"]
    assert {"n_embd", "n_layer", "n_head", "n_inner", "n_positions", "layer_norm_epsilon"} <= set(saved)
    assert "hidden_size" not in saved and "type_vocab_size" not in saved
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in (("reorder_and_upcast_attn", True), ("activation_function", "swish")):
        bad = {**config, "decoder": {**config["decoder"], key: value}}
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=key):
            EncoderDecoderModel.from_pretrained(tmp_path)


def test_gpt2_without_a_pad_id_is_a_clear_error_where_one_is_needed():
    _, ours = twins("bert2gpt2")
    model = EncoderDecoderModel(ours.config)
    model.config.pad_token_id = None
    ids, mask = inputs("bert2gpt2", [4, 3], 0)
    with pytest.raises(ValueError, match="pad_token_id is not set"):
        model(ids, mask, labels=torch.tensor([[5, EOS], [6, EOS]]))
    assert model.config.decoder.pad_token_id is None


def test_roberta_positions_start_after_the_pad_id():
    _, ours = twins("roberta2roberta")
    assert ours.config.encoder.max_positions == ours.config.decoder.max_positions == 64 - (PAD + 1)
    assert twins("bert2gpt2")[1].config.decoder.max_positions == 64
    ids, mask = inputs("roberta2roberta", [4, 3], 0)
    with pytest.raises(ValueError, match="exceeds the decoder.s 62 usable positions"):
        ours.generate(ids, mask, max_length=63)
