"""Secrets out of what seqrec shows: :func:`redact_url` masks the password of a connection URL
(every URL seqrec prints, logs or puts in an error goes through it), :func:`redact_text` masks
the passwords of URLs inside free text (a driver's error message, a log line)."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

#: what a password is shown as
MASK = "***"

# scheme://user:password@  (the password may hold anything but '@' and whitespace; '/' too,
# since SQLAlchemy and redis-py accept an unquoted one)
_CREDENTIALS = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^:@/\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)
# libpq's keyword form: password=secret (conninfo strings, Feast's Redis connection_string)
_KEYWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|[^\s,;&]+)", re.I)


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (``redis://:***@host:6379/0``, a
    ``password=`` query value too); a URL without one comes back unchanged."""
    return redact_text(url)


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with the password of every URL in it, every ``password=`` value and each of
    ``secrets`` (non-empty strings) masked."""
    text = _CREDENTIALS.sub(lambda m: m["head"] + MASK, text)
    text = _KEYWORD.sub(lambda m: m["head"] + MASK, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def url_password(url: str) -> str | None:
    """The password in ``url`` (percent-decoded), or None."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None
