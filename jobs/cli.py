"""`b2b COMMAND ...`: the command `pip install .` puts on the PATH, one subcommand per job.

    b2b generate --model DIR < articles.txt      summaries on this machine, no Ray
    b2b summarize --input ... --output ...       Parquet in, Parquet out, on a Ray cluster
    b2b nightly --corpus ... --output ...        the partitions that are new or changed
    b2b finetune --train ... --output ...        Ray Train DDP fine-tuning
    b2b convert SRC DST                          pickle checkpoints to HF-layout safetensors

`b2b COMMAND --help` lists a command's flags; `python -m jobs.COMMAND` runs the same code.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"generate": "jobs.generate", "summarize": "jobs.summarize", "nightly": "jobs.nightly",
            "finetune": "jobs.finetune", "convert": "model.convert"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"b2b: unknown command {command!r} (one of: {', '.join(COMMANDS)}; b2b --help)", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
