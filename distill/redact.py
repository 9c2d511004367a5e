"""Credentials never leave the process: URLs are shown and stored with their user:password replaced."""

from __future__ import annotations

import re

# scheme://user:pass@host or scheme://token@host, anywhere in a text
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact_url(text: str | None) -> str | None:
    """'http://user:secret@host/v1' → 'http://***@host/v1' (also inside a longer text, e.g. an error message)."""
    if text is None:
        return None
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
