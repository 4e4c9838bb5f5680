"""A BERT2BERT encoder-decoder in plain PyTorch, compatible with Hugging Face checkpoints."""

from .checkpoint import read_configs, write_atomic
from .config import BertConfig, EncoderDecoderConfig, GenerationConfig
from .encoder_decoder import EncoderDecoderModel, Seq2SeqOutput
from .generation import decode_step, static_decode_step
from .generation import plan as check_generation
from .tokenizer import Tokenizer, pad_ids

__all__ = [
    "BertConfig",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "GenerationConfig",
    "Seq2SeqOutput",
    "Tokenizer",
    "check_generation",
    "decode_step",
    "pad_ids",
    "read_configs",
    "static_decode_step",
    "write_atomic",
]
