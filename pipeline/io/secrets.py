"""Keep credentials out of logs, reports, markers and error messages.

Storage options are fsspec keyword arguments, where credentials sit under keys such as `key`, `secret`,
`token`, `password` or `client_kwargs.aws_secret_access_key`; URLs may carry them as `user:password@`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

MASK = "***"
# A secret word as a whole word of the key (snake_case, kebab-case or camelCase), also joined to a prefix or
# "file": `aws_secret_access_key`, `sessionToken`, `apikey`, `keyfile`, `password`; not `max_input_tokens`.
SECRET_WORD = re.compile(r"(?:^|[^a-z])(?:api|access|secret|session|auth|private|client)?"
                         r"(?:key|secret|token|password|passwd|passphrase|credentials?|authorization)(?:file)?"
                         r"(?:$|[^a-z])")


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_WORD.search(re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()))
URL_PASSWORD = re.compile(r"(://[^/\s:@]*):[^@/\s]*@")


def redact_url(text: str) -> str:
    """`s3://user:password@bucket/x` -> `s3://user:***@bucket/x`, anywhere in a text."""
    return URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def redact(obj: Any) -> Any:
    """A copy of a config, dict, list or string with secret-looking keys' values and URL passwords masked;
    dataclasses become dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return redact({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: MASK if is_secret_key(k) and v not in (None, "", {}) else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    return redact_url(obj) if isinstance(obj, str) else obj


def secret_values(obj: Any) -> list[str]:
    """Every string stored under a secret-looking key, at any depth."""
    if isinstance(obj, dict):
        found = []
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str) and v:
                found.append(v)
            else:
                found.extend(secret_values(v))
        return found
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in secret_values(v)]
    return []


def scrub(text: str, storage_options: dict[str, Any] | None = None) -> str:
    """A message with URL passwords and the storage options' secret values masked."""
    text = redact_url(text)
    for value in sorted(secret_values(storage_options or {}), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
