"""Hiding credentials in URLs before they are printed, logged or saved.

Server URLs given to judgecal (``--api-base``, ``--tracking-uri``, ``--storage``) may hold a
password (``postgresql://user:secret@host/db``, ``https://user:secret@gpu-box/v1``) or a key
in the query (``?api-key=...``). Everything that shows or stores such a URL goes through
:func:`redact_url`, and free text that may quote one (an error message) through
:func:`redact_text`, so there is one rule for all of them.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode

HIDDEN = "***"


# Query parameters whose value is a credential: api_key, api-key, apikey, access_token,
# token, secret, client_secret, password, passwd, pwd, sig, signature, auth, credential...
_SECRET_NAME = re.compile(r"(key|token|secret|passw|pwd|auth|sig|credential)", re.IGNORECASE)


# A URL inside text: it ends at white space, a bracket, a quote or a comma, except in its
# user info, which runs to the last "@" before white space (or the query), as redact_url
# reads it: a password holding any of those characters is hidden whole.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^\s?#]*@)?[^\s'\"<>()\[\]{},]+")


_WEB_SCHEMES = frozenset({"http", "https", "ws", "wss"})


def redact_url(url: str) -> str:
    """``url`` with any password and any credential-like query value replaced by ``***``.

    The user name and host stay, so the URL still says where it points. A password
    containing ``@`` is cut at the last ``@`` of the authority, where a server reads it.
    Database URLs are rendered by SQLAlchemy (``make_url(...).render_as_string(
    hide_password=True)``); anything that does not parse as a URL is returned unchanged.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme:
        return url
    head, mark, tail = _split_query(rest)
    authority, path = _split_authority(head)
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and scheme.lower() not in _WEB_SCHEMES:
            rendered = _sqlalchemy_render(f"{scheme}://{user}:{quote(password, safe='')}@{hostport}{path}")
            if rendered is not None:
                return rendered + _redact_query(mark, tail)
        authority = f"{user}:{HIDDEN}@{hostport}" if colon else f"{user}@{hostport}"
    return f"{scheme}://{authority}{path}{_redact_query(mark, tail)}"


def redact_text(text: str) -> str:
    """Every URL inside ``text`` (an error message, a log line) passed through :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a password or a credential-like query value."""
    return redact_url(url) != url


def _split_query(rest: str) -> tuple[str, str, str]:
    """(before, '?' or '#', after): the query and fragment are redacted separately."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return rest, "", ""
    return rest[:cut], rest[cut], rest[cut + 1 :]


def _split_authority(head: str) -> tuple[str, str]:
    """(authority, path). The authority runs to the last ``@`` when there is one, so that
    a password holding ``@`` or ``/`` is not mistaken for the host or the path."""
    at = head.rfind("@")
    if at < 0:
        slash = head.find("/")
        return (head, "") if slash < 0 else (head[:slash], head[slash:])
    slash = head.find("/", at)
    return (head, "") if slash < 0 else (head[:slash], head[slash:])


def _redact_query(mark: str, tail: str) -> str:
    if not mark:
        return ""
    if mark == "#":
        return "#" + tail
    query, hash_mark, fragment = tail.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_SECRET_NAME.search(name) and value for name, value in pairs):
        return "?" + tail
    hidden = [(name, HIDDEN if _SECRET_NAME.search(name) and value else value) for name, value in pairs]
    return "?" + urlencode(hidden, safe="*") + hash_mark + fragment


def _sqlalchemy_render(url: str) -> str | None:
    """SQLAlchemy's rendering of a database URL (without its query) with the password
    hidden. The password is percent-encoded before parsing: SQLAlchemy's parser stops a
    password at its first ``@``."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        return None
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return None
