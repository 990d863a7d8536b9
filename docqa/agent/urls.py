"""Base URLs in messages and on the wire: credentials moved out of the URL, secrets never shown."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit


def url_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password)


def basic_auth(url: str) -> tuple[str, dict[str, str], list[str]]:
    """(URL without user:password, headers sending them as HTTP Basic auth, the secrets to scrub)."""
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    secrets = [password, parts.password or "", token, f"{user}:{password}"]
    return bare, {"Authorization": f"Basic {token}"}, [s for s in secrets if s and password]


def one_line(text: str) -> str:
    return " ".join(text.split())


def display_url(url: str) -> str:
    """The base URL for messages: without user:password or query, which may hold secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
