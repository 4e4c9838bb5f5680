"""HF checkpoint keys <-> ours, built from the families' rule tables (model.families).

One HF tensor maps to one of ours, or to several (GPT-2's fused c_attn: split along the output axis), transposed
where HF stores a Conv1D; saving stacks and transposes back. `{}` matches a layer index only and every pattern
is anchored on both ends, so no rule can misfire on another key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import EncoderDecoderConfig
from ..families import Family, Rule, rule


@dataclass(frozen=True)
class Entry:
    hf: str  # full HF key, `{}` for the layer index
    ours: tuple[str, ...]  # our full keys
    transpose: bool  # a Conv1D weight
    row: bool = False  # HF stores ours [N] as [1, N] (BART's final_logits_bias)

    def pattern(self, template: str) -> re.Pattern:
        return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)"))

    def fill(self, template: str, layer: str | None) -> str:
        return template if layer is None else template.replace("{}", layer)


def expand(rules: tuple[Rule, ...], hf_prefix: str, ours_prefix: str) -> list[Entry]:
    return [Entry(f"{hf_prefix}{r.hf}.{param}", tuple(f"{ours_prefix}{o}.{param}" for o in r.ours),
                  r.conv1d and param == "weight")
            for r in rules for param in ("weight", "bias")]


def head_entries(fam: Family, hf_prefix: str, untied_head: bool) -> list[Entry]:
    out = expand(fam.head, hf_prefix, "lm_head.")
    if fam.head_bias is not None:
        out.append(Entry(hf_prefix + fam.head_bias, ("lm_head.bias",), False, fam.head_bias_row))
    if untied_head:
        out.append(Entry(hf_prefix + fam.head_weight, ("lm_head.weight",), False))
    return out


class KeyMap:
    def __init__(self, entries: list[Entry], ignored: Callable[[str], bool], unsaved: frozenset[str] = frozenset()):
        self.ignored = ignored
        self.unsaved = unsaved  # our keys that alias another's tensor and have no HF name of their own
        self.hf_patterns = [(e.pattern(e.hf), e) for e in entries]
        self.ours_patterns = [(e.pattern(o), e) for e in entries for o in e.ours]

    @classmethod
    def for_model(cls, config: EncoderDecoderConfig, untied_head: bool) -> KeyMap:
        """An HF EncoderDecoderModel's keys, or a seq2seq family's own model's (BART)."""
        enc, dec = config.encoder.family, config.decoder.family
        if dec.sides is not None:
            entries = [*expand(enc.stack, f"{enc.base_prefix}.encoder.", "encoder."),
                       *expand(dec.stack, f"{dec.base_prefix}.decoder.", "decoder."),
                       *expand(dec.model_rules, "", ""), *head_entries(dec, "", untied_head)]
            unsaved = frozenset({"encoder.embed.tok.weight"} if dec.shared_embeddings else ())
            return cls(entries, lambda key: (key == dec.head_weight and not untied_head)
                       or bool(dec.ignored.search(key)), unsaved)
        entries = [*expand(enc.stack, "encoder.", "encoder."),
                   *expand(dec.stack, f"decoder.{dec.base_prefix}.", "decoder."),
                   *head_entries(dec, "decoder.", untied_head),
                   *expand((rule("enc_to_dec_proj", "enc_to_dec_proj"),), "", "")]
        tied = {"decoder." + k for k in (dec.head_weight, dec.bias_copy()) if k is not None}

        def ignored(key: str) -> bool:
            if key in tied:
                return not (untied_head and key == "decoder." + dec.head_weight)
            part, _, rest = key.partition(".")
            fam = {"encoder": enc, "decoder": dec}.get(part)
            return fam is not None and bool(fam.ignored.search(rest))
        return cls(entries, ignored)

    @classmethod
    def for_part(cls, fam: Family, part: str) -> KeyMap:
        """One pretrained checkpoint of `fam` (its base model's prefix removed) used as `part`, "encoder" or
        "decoder"; the decoder takes its LM head (tied to the word embeddings) where it has one."""
        entries = expand(tuple(r for r in fam.stack if part == "encoder" or r.ours != ("pooler",)), "", f"{part}.")
        if part == "decoder":
            entries += head_entries(fam, "", False)
        copies = {k for k in (fam.head_weight, fam.bias_copy()) if k is not None}
        return cls(entries, lambda key: key in copies or bool(fam.ignored.search(key)))

    def match(self, key: str) -> tuple[Entry, str | None] | None:
        for pattern, entry in self.hf_patterns:
            if m := pattern.fullmatch(key):
                return entry, (m.group(1) if m.groups() else None)
        return None

    def to_ours(self, key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
        """Our keys and tensors for one HF tensor; None for a key that holds nothing we use; KeyError if unknown."""
        if self.ignored(key):
            return None
        found = self.match(key)
        if found is None:
            raise KeyError(key)
        entry, layer = found
        if entry.transpose:
            tensor = tensor.t()
        if entry.row:
            tensor = tensor.reshape(-1)
        pieces = tensor.chunk(len(entry.ours)) if len(entry.ours) > 1 else (tensor,)
        return [(entry.fill(o, layer), p.contiguous() if entry.transpose or len(pieces) > 1 else p)
                for o, p in zip(entry.ours, pieces, strict=True)]

    def hf_shape(self, key: str, expected: dict[str, torch.Size]) -> list[int] | None:
        """The shape our config implies for an HF key (None if it names no tensor of ours)."""
        entry, layer = self.match(key)
        shapes = [expected.get(entry.fill(o, layer)) for o in entry.ours]
        if any(s is None for s in shapes):
            return None
        shape = [sum(s[0] for s in shapes), *shapes[0][1:]]
        return [1, *shape] if entry.row else shape[::-1] if entry.transpose else shape

    def _find(self, ours: str) -> tuple[Entry, str | None]:
        for pattern, entry in self.ours_patterns:
            if m := pattern.fullmatch(ours):
                return entry, (m.group(1) if m.groups() else None)
        raise KeyError(ours)

    def hf_name(self, ours: str) -> str:
        entry, layer = self._find(ours)
        return entry.fill(entry.hf, layer)

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF's keys and tensors for our state dict (stacked and transposed back where HF fuses)."""
        out = {}
        for key in state:
            if key in self.unsaved:
                continue
            entry, layer = self._find(key)
            name = entry.fill(entry.hf, layer)
            if name in out:
                continue
            parts = [state[entry.fill(o, layer)].detach() for o in entry.ours]
            tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
            out[name] = tensor.t() if entry.transpose else tensor[None] if entry.row else tensor
        return out
