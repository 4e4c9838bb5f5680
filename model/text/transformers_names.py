"""transformers' class names for this package's classes, so that the snippets of transformers' encoder-decoder
page run with only their import line changed (`from model import AutoTokenizer, EncoderDecoderModel`)."""

from ..architecture import EncoderDecoderModel
from ..tokenization import Tokenizer

AutoTokenizer = BertTokenizer = BertTokenizerFast = BertGenerationTokenizer = Tokenizer
# the page loads its bert2bert with AutoModelForCausalLM (which transformers itself maps to no encoder-decoder)
AutoModel = AutoModelForSeq2SeqLM = AutoModelForCausalLM = EncoderDecoderModel
# a BART folder (model_type "bart") loads through the same classes
BartForConditionalGeneration = EncoderDecoderModel
BartTokenizer = BartTokenizerFast = Tokenizer
