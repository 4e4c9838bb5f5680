"""Checkpoints both ways with transformers, over local paths and s3://, and clear errors on bad files."""

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from model import EncoderDecoderModel, GenerationConfig
from tests.helpers import padded_batch, tiny_hf


def hf_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "position_ids" not in k and "token_type_ids" not in k}


@pytest.mark.parametrize("kind,dec_hidden", [("bert", 32), ("gen", 48)])
def test_saved_by_transformers_loaded_by_us_and_back(tmp_path, kind, dec_hidden):
    hf = tiny_hf(kind, 32, dec_hidden, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = EncoderDecoderModel.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as a, \
            safe_open(tmp_path / "ours" / "model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    back = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    back, info = back
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reference = hf_tensors(hf)
    for key, tensor in hf_tensors(back).items():
        assert torch.equal(tensor, reference[key]), key


def test_dtype_files_and_cast(tmp_path):
    hf = tiny_hf(seed=4).to(torch.float16)
    hf.save_pretrained(tmp_path)
    assert EncoderDecoderModel.from_pretrained(tmp_path).dtype == torch.float16
    ours = EncoderDecoderModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours.decoder.embed.tok.weight, hf.decoder.bert.embeddings.word_embeddings.weight.bfloat16())


def test_sharded_checkpoint(tmp_path):
    hf = tiny_hf(seed=5)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = EncoderDecoderModel.from_pretrained(tmp_path)
    ids, mask = padded_batch(99, [5, 3])
    with torch.no_grad():
        a = ours(ids, mask, decoder_input_ids=ids).logits
        b = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
    assert (a - b).abs().max() <= 1e-4


def test_configs_keep_unknown_keys_and_legacy_generation_settings(tmp_path):
    hf = tiny_hf(seed=6)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(max_length=142, min_length=56, num_beams=4, no_repeat_ngram_size=3, length_penalty=2.0,
                  early_stopping=True, my_custom_key={"a": 1})
    config["decoder"]["another_key"] = "kept"
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").unlink()
    ours = EncoderDecoderModel.from_pretrained(tmp_path)
    g = ours.generation_config
    assert (g.max_length, g.min_length, g.num_beams, g.no_repeat_ngram_size, g.length_penalty, g.early_stopping) == (
        142, 56, 4, 3, 2.0, True)
    assert (g.decoder_start_token_id, g.pad_token_id, g.eos_token_id) == (1, 0, 2)
    ours.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["my_custom_key"] == {"a": 1} and saved["decoder"]["another_key"] == "kept"
    assert GenerationConfig.from_dict(json.loads((tmp_path / "out" / "generation_config.json").read_text())) == g
    hf_gen = transformers.GenerationConfig.from_pretrained(tmp_path / "out")
    assert (hf_gen.num_beams, hf_gen.max_length, hf_gen.length_penalty) == (4, 142, 2.0)


def test_round_trip_through_s3(tmp_path, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("models-bucket")
    hf = tiny_hf(seed=7)
    hf.save_pretrained(tmp_path)
    ours_local = EncoderDecoderModel.from_pretrained(tmp_path)
    ours_local.save_pretrained("s3://models-bucket/b2b")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("models-bucket/b2b", refresh=True)) == [
        "config.json", "generation_config.json", "model.safetensors"]
    ours = EncoderDecoderModel.from_pretrained("s3://models-bucket/b2b")
    for key, tensor in ours_local.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[key]), key


def test_truncated_safetensors_names_the_file(tmp_path):
    tiny_hf(seed=8).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        EncoderDecoderModel.from_pretrained(tmp_path)


def test_wrong_shape_in_config_names_file_and_key(tmp_path):
    tiny_hf(seed=9).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["decoder"]["intermediate_size"] = 50
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: decoder\.bert\.encoder\.layer\.0\.intermediate"):
        EncoderDecoderModel.from_pretrained(tmp_path)


def test_missing_files_and_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: file not found"):
        EncoderDecoderModel.from_pretrained(tmp_path)
    hf = tiny_hf(seed=10)
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        EncoderDecoderModel.from_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf_tensors(hf).items() if "pooler" not in k}
    del state["decoder.cls.predictions.decoder.weight"], state["decoder.cls.predictions.decoder.bias"]
    state["encoder.surprise.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: encoder\.pooler\.dense\.bias.*\n.*unexpected keys: "
                                         r"encoder\.surprise\.weight"):
        EncoderDecoderModel.from_pretrained(tmp_path)


def test_pickle_refused_unless_opted_in(tmp_path):
    hf = tiny_hf(seed=11)
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf_tensors(hf), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle checkpoints can run arbitrary code"):
        EncoderDecoderModel.from_pretrained(tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path, allow_pickle=True)
    assert torch.equal(ours.encoder.embed.pos.weight, hf.encoder.embeddings.position_embeddings.weight)
