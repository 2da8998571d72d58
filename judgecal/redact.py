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
# user info, which runs to the last "@" before white space, as redact_url reads it: a
# password holding any of those characters (or "?", "#") is hidden whole.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^\s@]*@)*[^\s'\"<>()\[\]{},]+")

# "user:password@host" without a scheme, starting a word ("failed to connect to
# alice:pa55word@gpu-box:8000"); the password runs to the last "@" before a host.
_AUTHORITY_IN_TEXT = re.compile(r"(?<![^\s(\[{<'\",=])([\w.~%+-]+):(?!//)\S*@(?=[\w\[])")


_WEB_SCHEMES = frozenset({"http", "https", "ws", "wss"})

# "user:password@" at the start of what follows "://". SQLAlchemy's own reading for
# databases: a user without ":" or "/", then anything but "@". For web URLs the user holds
# no "?" or "#" either, and digits ending at "/", "?" or "#" after the colon are a port.
_DATABASE_PASSWORD = re.compile(r"[^:/@]*:[^@]*@")
_WEB_PASSWORD = re.compile(r"[^:/?#@]*:(?!\d+(?:[/?#]|$))[^@]*@")


def redact_url(url: str) -> str:
    """``url`` with any password and any credential-like query value replaced by ``***``.

    The user name and host stay, so the URL still says where it points. A password is
    read the way its consumer reads it, and hidden whole: in a database URL up to the
    ``@`` before the host, ``?``, ``#`` and ``/`` included (SQLAlchemy's reading); in a web
    URL the same, unless what follows the colon is a port. A password containing ``@`` is
    cut at the last ``@``. Database URLs are rendered by SQLAlchemy
    (``make_url(...).render_as_string(hide_password=True)``); anything that does not parse
    as a URL is returned unchanged.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme:
        return url
    at = _password_end(scheme, rest)
    if at < 0:
        return f"{scheme}://{_redact_after_authority(rest)}"
    user, _, password = rest[:at].partition(":")
    head, mark, tail = _split_query(rest[at + 1 :])
    slash = head.find("/")
    hostport, path = (head, "") if slash < 0 else (head[:slash], head[slash:])
    if scheme.lower() not in _WEB_SCHEMES:
        rendered = _sqlalchemy_render(f"{scheme}://{user}:{quote(password, safe='')}@{hostport}{path}")
        if rendered is not None:
            return rendered + _redact_query(mark, tail)
    return f"{scheme}://{user}:{HIDDEN}@{hostport}{path}{_redact_query(mark, tail)}"


def redact_text(text: str) -> str:
    """Every URL inside ``text`` (an error message, a log line) passed through
    :func:`redact_url`, and every ``user:password@host`` quoted without a scheme (as HTTP
    clients name the server they failed to reach) with its password hidden."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    return _AUTHORITY_IN_TEXT.sub(lambda match: f"{match.group(1)}:{HIDDEN}@", text)


def error_line(error: BaseException, *, with_type: bool = False) -> str:
    """An error as one line fit to show or save: its first line (DSPy and LiteLLM append
    lines of generic advice), credentials hidden; ``Type: message`` with ``with_type``."""
    text = str(error).strip()
    first = redact_text(text.splitlines()[0]) if text else ""
    if with_type:
        return f"{type(error).__name__}: {first}".rstrip(": ")
    return first or type(error).__name__


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a password or a credential-like query value."""
    return redact_url(url) != url


def _split_query(rest: str) -> tuple[str, str, str]:
    """(before, '?' or '#', after): the query and fragment are redacted separately."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return rest, "", ""
    return rest[:cut], rest[cut], rest[cut + 1 :]


def _password_end(scheme: str, rest: str) -> int:
    """Index in ``rest`` (the URL after ``://``) of the ``@`` that ends a ``user:password``,
    or -1 when the URL holds no password. The password starts at the first colon and runs
    to the last ``@``: a password may hold ``@`` (where SQLAlchemy would cut it unless it is
    percent-encoded), and hiding too much beats showing part of one; a query value holding
    ``@`` is hidden with it."""
    pattern = _WEB_PASSWORD if scheme.lower() in _WEB_SCHEMES else _DATABASE_PASSWORD
    return rest.rfind("@") if pattern.match(rest) else -1


def _redact_after_authority(rest: str) -> str:
    """A URL without a password: only key-like query values to hide."""
    head, mark, tail = _split_query(rest)
    return head + _redact_query(mark, tail)


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
