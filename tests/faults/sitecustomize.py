"""Test-only fault injection, loaded by every Python process that has this folder on PYTHONPATH (the job's
driver and all its Ray workers): the decode step runs out of device memory above a row count or an input
width, as a GPU would, without any hook in the project's code.

FAULT_OOM_ROWS: decoder rows per step above which the step raises; FAULT_OOM_WIDTH: the same for the
articles' padded input width.
"""

import os

if os.environ.get("FAULT_OOM_ROWS"):
    import torch

    import model.generation.calls

    ROWS, WIDTH = int(os.environ["FAULT_OOM_ROWS"]), int(os.environ.get("FAULT_OOM_WIDTH", "1000000"))

    def failing(make_step):
        """make_step (the calls loop's decode_step or the in-flight loop's static_decode_step), failing."""
        def failing_step(m, *args, **kwargs):
            step = make_step(m, *args, **kwargs)

            def run(tokens, memory_kv, memory_mask, cache, pos, group):
                if tokens.shape[0] > ROWS or memory_kv[0][0].shape[2] > WIDTH:
                    raise torch.cuda.OutOfMemoryError(
                        f"CUDA out of memory. Tried to allocate 2.00 GiB ({tokens.shape[0]} rows, injected)")
                return step(tokens, memory_kv, memory_mask, cache, pos, group)
            return run
        return failing_step

    model.generation.calls.decode_step = failing(model.generation.calls.decode_step)
    model.generation.calls.static_decode_step = failing(model.generation.calls.static_decode_step)
