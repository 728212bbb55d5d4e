"""Secrets kept out of logs, error messages and Django's debug page."""

from __future__ import annotations

from urllib.parse import urlsplit


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to log or show in an error."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL after all (an unbalanced bracket, a bad port)
        return url
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
