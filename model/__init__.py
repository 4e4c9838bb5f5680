"""A BERT2BERT encoder-decoder in plain PyTorch, compatible with Hugging Face checkpoints."""

from .checkpoint import read_configs, write_atomic
from .compat import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertGenerationTokenizer,
    BertTokenizer,
    BertTokenizerFast,
)
from .config import BertConfig, EncoderDecoderConfig, GenerationConfig
from .decode_policy import DecodePolicy
from .encoder_decoder import EncoderDecoderModel, Seq2SeqOutput
from .generation import DEFAULT_BATCH_TOKENS, batches
from .plan import plan as check_generation
from .steps import compiled_decode_step, decode_step, static_decode_step
from .tokenizer import BatchEncoding, Tokenizer, pad_ids

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoTokenizer",
    "BatchEncoding",
    "BertGenerationTokenizer",
    "BertTokenizer",
    "BertTokenizerFast",
    "BertConfig",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "GenerationConfig",
    "Seq2SeqOutput",
    "Tokenizer",
    "DecodePolicy",
    "batches",
    "check_generation",
    "compiled_decode_step",
    "decode_step",
    "pad_ids",
    "read_configs",
    "static_decode_step",
    "write_atomic",
]
