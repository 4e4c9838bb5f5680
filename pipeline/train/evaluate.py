"""Evaluation during fine-tuning: loss on held-out pairs and ROUGE of beam-search summaries."""

from __future__ import annotations

import torch
from rouge_score import rouge_scorer

from model import EncoderDecoderModel, Tokenizer

from .data import collate

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@torch.no_grad()
def evaluate(model: EncoderDecoderModel, tok: Tokenizer, decoder_tok: Tokenizer, rows: list[dict], batch_size: int,
             rouge_samples: int, num_beams: int, max_length: int, device: torch.device) -> dict[str, float]:
    """eval_loss (mean over label tokens of all rows) and eval_rouge1/2/L (F1, x100) on the first rouge_samples.

    rows are tokenized pairs as `TokenizePairs` makes them, with the `reference` summary text; tok pads the
    inputs, decoder_tok decodes the summaries.
    """
    was_training = model.training
    model.eval()
    total_loss = total_tokens = 0.0
    for start in range(0, len(rows), batch_size):
        batch = _batch(rows[start : start + batch_size], tok.pad_token_id, device)
        tokens = int((batch["labels"] != -100).sum())
        total_loss += float(model(**batch).loss) * tokens
        total_tokens += tokens
    metrics = {"eval_loss": total_loss / max(total_tokens, 1)}
    if rouge_samples > 0:
        sample = rows[:rouge_samples]
        predictions = []
        for start in range(0, len(sample), batch_size):
            batch = _batch(sample[start : start + batch_size], tok.pad_token_id, device)
            out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=num_beams,
                                 max_length=max_length)
            predictions += decoder_tok.batch_decode(out, skip_special_tokens=True)
        metrics.update(rouge([r["reference"] for r in sample], predictions))
    model.train(was_training)
    return metrics


def rouge(references: list[str], predictions: list[str]) -> dict[str, float]:
    """Mean ROUGE F1 x100 with Porter stemming, as the CNN/DailyMail papers report it."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref, pred in zip(references, predictions, strict=True):
        for name, score in scorer.score(ref, pred).items():
            totals[name] += score.fmeasure
    n = max(len(references), 1)
    return {f"eval_{name}": 100.0 * total / n for name, total in totals.items()}


def _batch(rows: list[dict], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    batch = collate({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}, pad_id)
    return {k: v.to(device) for k, v in batch.items()}
