"""Convert an encoder-decoder checkpoint to the layout the jobs read: safetensors weights in HF's names,
config.json, generation_config.json and the tokenizer files; transformers loads the result too.

    python -m model.convert SRC DST [--dtype float16]

SRC is a folder or fsspec URL with pytorch_model.bin (read with torch.load(weights_only=True), which loads
tensors only and runs no pickled code) or model.safetensors; DST is a folder or URL. The tokenizer is written
with tokenizer.json for WordPiece vocabularies; a SentencePiece one is copied as spiece.model (see
model/tokenization/sentencepiece_vocab.py for why it has no tokenizer.json). URLs use fsspec's standard
configuration: the AWS environment for s3://, and FSSPEC_S3_ENDPOINT_URL and the like for other endpoints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .architecture import EncoderDecoderModel
from .devices import DTYPES
from .tokenization import Tokenizer


def convert(src: str, dst: str, dtype: str | None = None, storage_options: dict[str, Any] | None = None) -> dict:
    """Read `src` (pickle or safetensors), write `dst`; returns what was written. dtype None keeps the file's."""
    model = EncoderDecoderModel.from_pretrained(src, dtype=DTYPES[dtype] if dtype else None, allow_pickle=True,
                                                storage_options=storage_options)
    try:
        tokenizer = Tokenizer.from_pretrained(src, storage_options)
    except FileNotFoundError:
        tokenizer = None
    model.save_pretrained(dst, storage_options)
    if tokenizer is not None:
        tokenizer.save_pretrained(dst, storage_options)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in model.state_dict().values()})
    return {"tensors": len(model.state_dict()), "dtypes": dtypes,
            "tokenizer": tokenizer.kind if tokenizer is not None else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint folder or URL (pytorch_model.bin or model.safetensors)")
    parser.add_argument("dst", help="folder or URL to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="store the weights in this dtype (default: as in the source)")
    args = parser.parse_args(argv)
    try:
        done = convert(args.src, args.dst, args.dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tokenizer = f"{done['tokenizer']} tokenizer" if done["tokenizer"] else "no tokenizer files found"
    print(f"wrote {args.dst}: {done['tensors']} tensors ({', '.join(done['dtypes'])}), {tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
