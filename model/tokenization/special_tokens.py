"""Special tokens as tokenizer files give them, for every kind of vocabulary."""

from __future__ import annotations

from typing import Any


def token_content(token: Any) -> Any:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken as a dict."""
    return token["content"] if isinstance(token, dict) else token
