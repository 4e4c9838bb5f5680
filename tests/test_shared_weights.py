"""Shared-weight (tie_encoder_decoder) RoBERTa models whose encoder is deeper than the decoder, against
transformers 4.x's semantics: 4.x ties the decoder's base model into the encoder module by module, layer i of
the decoder to layer i of the encoder, and leaves the encoder's extra layers (and its pooler) its own. 4.x is
not installed: the oracle is transformers 5's EncoderDecoderModel with its modules tied here as 4.x's
`_tie_encoder_decoder_weights` ties them. Both file layouts load: the shared tensors stored once (4.x) or twice
(transformers 5, us). Equal depth is covered in test_families.py."""

from __future__ import annotations

import pathlib

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from model import EncoderDecoderModel
from tests.helpers import padded_batch

VOCAB, START, PAD, EOS = 100, 0, 1, 2
transformers.logging.set_verbosity_error()


def roberta(layers: int, decoder: bool) -> transformers.RobertaConfig:
    return transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=56,
        max_position_embeddings=64, type_vocab_size=1, pad_token_id=PAD, bos_token_id=START, eos_token_id=EOS,
        is_decoder=decoder, add_cross_attention=decoder)


def tie_as_4x(decoder: torch.nn.Module, encoder: torch.nn.Module) -> None:
    """transformers 4.x's tie_encoder_to_decoder_recursively: a module with a weight gives the encoder's its
    weight and bias; otherwise children are paired by name (list positions by number, stepping back over a
    decoder child of another type when the lists differ in length), children only the decoder has skipped."""
    if hasattr(decoder, "weight"):
        encoder.weight = decoder.weight
        if hasattr(decoder, "bias"):
            encoder.bias = decoder.bias
        return
    enc_modules, dec_modules = encoder._modules, decoder._modules
    offset = 0
    for name, module in dec_modules.items():
        if name.isdigit():
            enc_name = str(int(name) + offset)
            if not isinstance(module, type(enc_modules[enc_name])) and len(enc_modules) != len(dec_modules):
                offset -= 1
                continue
        elif name not in enc_modules:
            continue
        else:
            enc_name = name
        tie_as_4x(module, enc_modules[enc_name])


def write_checkpoint(folder: pathlib.Path, enc_layers: int, dec_layers: int, one_copy: bool, seed: int = 0) -> None:
    """A random shared-weight model tied as 4.x ties it, saved with the shared tensors once (the encoder's
    copies absent, as 4.x wrote them) or twice."""
    torch.manual_seed(seed)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        roberta(enc_layers, False), roberta(dec_layers, True), tie_encoder_decoder=True)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = START, PAD, EOS
    hf = transformers.EncoderDecoderModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a wrong pairing cannot hide
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(folder)  # before tying: transformers 5 refuses to save tensors it does not tie itself
    tie_as_4x(hf.decoder.roberta, hf.encoder)
    stored = load_file(folder / "model.safetensors").keys()  # the names transformers 5 stores
    decoder_ptrs = {t.data_ptr() for t in hf.decoder.state_dict().values()}
    state = hf.state_dict()
    state = {k: state[k].clone().contiguous() for k in stored
             if not (one_copy and k.startswith("encoder.") and state[k].data_ptr() in decoder_ptrs)}
    assert ("encoder.encoder.layer.0.attention.self.query.weight" in state) != one_copy
    assert f"encoder.encoder.layer.{enc_layers - 1}.attention.self.query.weight" in state
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def oracle(folder: pathlib.Path) -> transformers.EncoderDecoderModel:
    hf = transformers.EncoderDecoderModel.from_pretrained(folder).eval()
    tie_as_4x(hf.decoder.roberta, hf.encoder)
    return hf


def logits(model, ids, mask, dec_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids).logits


@pytest.mark.parametrize("one_copy", [True, False], ids=["4x-layout", "both-copies"])
def test_deeper_encoder_gives_4x_logits(tmp_path, one_copy):
    write_checkpoint(tmp_path, 4, 2, one_copy)
    ours, hf = EncoderDecoderModel.from_pretrained(tmp_path), oracle(tmp_path)
    ids, mask = padded_batch(VOCAB, [9, 5, 7], 3)
    ids = ids.masked_fill(mask == 0, PAD)
    dec_ids = torch.tensor([[START, 4, 5, 6], [START, 7, 8, 9], [START, 10, 11, 12]])
    assert (logits(ours, ids, mask, dec_ids) - logits(hf, ids, mask, dec_ids)).abs().max().item() <= 1e-4
    enc, dec = ours.encoder, ours.decoder
    for i in range(2):
        assert enc.layers[i].attn is dec.layers[i].attn and enc.layers[i].ffn_up is dec.layers[i].ffn_up
    for i in range(2, 4):  # the encoder's own layers, loaded from its own keys
        assert enc.layers[i].attn.q.weight.data_ptr() not in {p.data_ptr() for p in dec.parameters()}
        assert torch.equal(enc.layers[i].ffn_up.weight, hf.encoder.encoder.layer[i].intermediate.dense.weight)

    ours.save_pretrained(tmp_path / "again")  # both copies, which transformers 5 and we read back alike
    back = EncoderDecoderModel.from_pretrained(tmp_path / "again")
    assert torch.equal(logits(back, ids, mask, dec_ids), logits(ours, ids, mask, dec_ids))
    plain = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "again").eval()
    assert (logits(plain, ids, mask, dec_ids) - logits(hf, ids, mask, dec_ids)).abs().max().item() <= 1e-4


def test_deeper_decoder_is_refused(tmp_path):
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        roberta(2, False), roberta(3, True), tie_encoder_decoder=True)
    transformers.EncoderDecoderModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="encoder at least as deep as the decoder; the encoder has 2 layers"):
        EncoderDecoderModel.from_pretrained(tmp_path)
