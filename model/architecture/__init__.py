"""The network: transformer blocks for every family (read from the config's family), oneDNN-packed CPU linears,
and the encoder-decoder (forward and loss, encode once, decode with a cache; load, save, warm start, generate)."""

from .encoder_decoder import EncoderDecoderModel, Seq2SeqOutput

__all__ = ["EncoderDecoderModel", "Seq2SeqOutput"]
