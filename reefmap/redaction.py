"""Credentials never leave memory: URLs are redacted wherever they are shown or stored.

``redact(url)`` hides a URL's userinfo (``https://alice:pw@host/x`` → ``https://***@host/x``) and the values of
its credential-like query parameters (presigned S3/GCS URLs, Azure SAS tokens, API keys: ``...?X-Amz-Signature=
REDACTED``). ``redact_text(text)`` does it to every URL inside a message. The real URL stays only in memory, for the
readers; every ``ReefmapError`` message, the map's attributes, tile error records, status lines and pictures use
these. ``reefmap.sources.urls`` re-exports both.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

#: what replaces a secret query value, and a URL's userinfo
REDACTED = "REDACTED"
USERINFO = "***"

#: query-parameter names (lower case) whose values are credentials: presigned S3/GCS URLs, Azure SAS, API keys
SECRET_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential",
    "sig", "signature", "token", "access_token", "key", "apikey", "api_key", "code",
    "sv", "se", "st", "sp", "sr", "spr", "sip", "skoid", "sktid", "skt", "ske", "sks", "skv",  # Azure SAS
})
#: a query-parameter name containing one of these (lower case) is a credential too
SECRET_WORDS = ("token", "secret", "password", "passwd", "signature", "credential", "auth")

# a URL inside a message: a scheme, "://", then anything up to whitespace, a quote or a bracket
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}`\\]+")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a credential."""
    n = unquote(name).strip().lower()
    return n in SECRET_PARAMS or any(w in n for w in SECRET_WORDS)


def redact(url: str) -> str:
    """``url`` with its userinfo replaced by ``***`` and its credential-like query values by ``REDACTED``; a
    string without ``://`` (a local path) is returned unchanged."""
    s = str(url)
    if "://" not in s:
        return s
    scheme, rest = s.split("://", 1)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        netloc = USERINFO + "@" + netloc.rsplit("@", 1)[1]
    tail, hash_, fragment = tail.partition("#")
    path, q, query = tail.partition("?")
    if q:
        parts = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            parts.append(f"{name}={REDACTED}" if eq and is_secret_param(name) else item)
        query = "&".join(parts)
    return f"{scheme}://{netloc}{path}{q}{query}{hash_}{fragment}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (see ``redact``)."""
    s = str(text)
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), s) if "://" in s else s
