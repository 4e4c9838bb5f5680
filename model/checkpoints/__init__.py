"""Hugging Face checkpoints: HF key names <-> ours (the families' tables), safetensors (single and sharded),
pickles on request, configs, warm-start state, fsspec URLs."""

from .hf_state import load_hf_state, read_configs, read_pretrained, save_hf, warm_start_state

__all__ = ["load_hf_state", "read_configs", "read_pretrained", "save_hf", "warm_start_state"]
