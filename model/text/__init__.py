"""Text in, text out: TextGenerator (what a replica, pipeline() and the command line run), pipeline(), and
transformers' class names for ours."""

from .generator import BATCHING, ERR_OOM, Generated, TextGenerator, check_vocabularies
from .pipelines import Text2TextPipeline, pipeline
from .transformers_names import (
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
)

__all__ = ["BATCHING", "ERR_OOM", "AutoModel", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoTokenizer",
           "BartForConditionalGeneration", "BartTokenizer", "BartTokenizerFast", "BertGenerationTokenizer",
           "BertTokenizer", "BertTokenizerFast", "Generated", "Text2TextPipeline", "TextGenerator",
           "check_vocabularies", "pipeline"]
