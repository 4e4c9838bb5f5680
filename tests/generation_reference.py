"""A slow, obviously-correct beam search to test the fast one against (test-only).

One article at a time, Python lists of hypotheses, the whole decoder prefix recomputed at every step
(no cache), processors written as plain loops. Rules as in transformers: top 2K candidates, a finished
candidate is kept only if it ranks within K, score = sum of log-probs / generated length ** length_penalty.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def processed_log_probs(seq: list[int], logp: list[float], eos: int, min_length: int, no_repeat: int,
                        penalty: float) -> list[float]:
    logp = list(logp)
    if penalty != 1.0:
        for t in set(seq):
            logp[t] = logp[t] * penalty if logp[t] < 0 else logp[t] / penalty
    if no_repeat and len(seq) >= no_repeat:
        tail = tuple(seq[len(seq) - no_repeat + 1:])
        for i in range(len(seq) - no_repeat + 1):
            if tuple(seq[i:i + no_repeat - 1]) == tail:
                logp[seq[i + no_repeat - 1]] = -math.inf
    if len(seq) < min_length:
        logp[eos] = -math.inf
    return logp


@torch.no_grad()
def reference_beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, num_beams: int,
                          max_length: int, length_penalty: float = 1.0, early_stopping=False, min_length: int = 0,
                          no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0) -> list[list[int]]:
    """The best hypothesis of every article."""
    g = model.generation_config
    start, eos = g.decoder_start_token_id, g.eos_token_id
    out = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        ids = ids[mask.bool()][None]
        memory_kv = model.memory_kv(model.encode(ids))
        running = [([start], 0.0)]
        hyps: list[tuple[float, list[int]]] = []
        for cur in range(1, max_length):
            candidates = []
            for seq, score in running:
                logits = model.decode(torch.tensor([seq]), memory_kv, None)[0, -1].float()
                logp = processed_log_probs(seq, F.log_softmax(logits, -1).tolist(), eos, min_length,
                                           no_repeat_ngram_size, repetition_penalty)
                candidates += [(score + lp, seq, tok) for tok, lp in enumerate(logp)]
            candidates.sort(key=lambda c: -c[0])
            full = early_stopping is True and len(hyps) == num_beams
            running = []
            for rank, (score, seq, tok) in enumerate(candidates[:2 * num_beams]):
                if tok == eos or cur + 1 == max_length:
                    if rank < num_beams and not full:
                        hyps.append((score / cur ** length_penalty, seq + [tok]))
                elif len(running) < num_beams:
                    running.append((seq + [tok], score))
            hyps = sorted(hyps, key=lambda h: -h[0])[:num_beams]
            if cur + 1 == max_length:
                break
            if len(hyps) == num_beams:
                length = max_length - 1 if early_stopping == "never" and length_penalty > 0 else cur
                if early_stopping is True or running[0][1] / length ** length_penalty <= hyps[-1][0]:
                    break
        out.append(hyps[0][1])
    return out
