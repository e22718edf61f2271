"""Database URLs as text: masking a password wherever it appears, even in a URL that does not
parse (parsing for the driver is the run side's, in `run/engine.py`)."""

from __future__ import annotations

import re

_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def mask_url_text(raw: str) -> str:
    """Masks the password of a URL, even one that does not parse: in the user:password@
    part and in a `password=` query parameter."""
    text = _QUERY_PASSWORD.sub(r"\1***", raw)
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    base, question, query = rest.partition("?")
    credentials, at, host = base.rpartition("@")
    if at and ":" in credentials:
        base = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{separator}{base}{question}{query}"
