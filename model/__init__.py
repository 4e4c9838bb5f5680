"""Encoder-decoders of BERT, BertGeneration, RoBERTa and GPT-2, and BART, in plain PyTorch, compatible with Hugging Face
checkpoints."""

from .architecture import EncoderDecoderModel, Seq2SeqOutput
from .checkpoints import read_configs
from .config import BertConfig, EncoderDecoderConfig, GenerationConfig, StackConfig
from .devices import run_dtype
from .generation import (
    DEFAULT_BATCH_TOKENS,
    DecodePolicy,
    DecodeStats,
    batches,
    check_generation,
    compiled_decode_step,
    decode_step,
    static_decode_step,
)
from .storage import write_atomic
from .text import (
    BATCHING,
    ERR_OOM,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartForConditionalGeneration,
    BartTokenizer,
    BartTokenizerFast,
    BertGenerationTokenizer,
    BertTokenizer,
    BertTokenizerFast,
    Generated,
    Text2TextPipeline,
    TextGenerator,
    check_vocabularies,
    pipeline,
)
from .tokenization import DECODER_TOKENIZER, BatchEncoding, Tokenizer, load_tokenizers, pad_ids, save_tokenizers

__all__ = [
    "BATCHING",
    "DECODER_TOKENIZER",
    "DEFAULT_BATCH_TOKENS",
    "ERR_OOM",
    "Generated",
    "TextGenerator",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoTokenizer",
    "BartForConditionalGeneration",
    "BartTokenizer",
    "BartTokenizerFast",
    "BatchEncoding",
    "BertGenerationTokenizer",
    "BertTokenizer",
    "BertTokenizerFast",
    "BertConfig",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "GenerationConfig",
    "Seq2SeqOutput",
    "StackConfig",
    "Text2TextPipeline",
    "Tokenizer",
    "DecodePolicy",
    "DecodeStats",
    "batches",
    "check_generation",
    "check_vocabularies",
    "compiled_decode_step",
    "decode_step",
    "load_tokenizers",
    "pad_ids",
    "pipeline",
    "read_configs",
    "run_dtype",
    "save_tokenizers",
    "static_decode_step",
    "write_atomic",
]
