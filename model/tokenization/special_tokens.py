"""Special tokens as tokenizer files give them, for every kind of vocabulary."""

from __future__ import annotations

from typing import Any


def token_content(token: Any) -> Any:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken as a dict."""
    return token["content"] if isinstance(token, dict) else token


# The roles transformers reads from tokenizer_config.json; with the lists of extra special tokens, the tokens an
# added_tokens.json entry is special for.
ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA = ("extra_special_tokens", "additional_special_tokens")


def added_tokens(config: dict[str, Any], added_tokens_json: dict[str, int] | None) -> dict[str, dict[str, Any]]:
    """The added tokens of a folder without tokenizer.json as transformers reads them: tokenizer_config.json's
    `added_tokens_decoder` (id -> AddedToken fields), else the legacy added_tokens.json (token -> id; special
    when it is one of the config's special tokens, normalized when it is not, as transformers converts it)."""
    if config.get("added_tokens_decoder") is not None or not added_tokens_json:
        return dict(config.get("added_tokens_decoder") or {})
    special = {token_content(config[k]) for k in ROLES if config.get(k)}
    special |= {token_content(t) for k in EXTRA if isinstance(config.get(k), list) for t in config[k]}
    return {str(i): {"content": t, "lstrip": False, "normalized": t not in special, "rstrip": False,
                     "single_word": False, "special": t in special}
            for t, i in sorted(added_tokens_json.items(), key=lambda kv: kv[1])}
