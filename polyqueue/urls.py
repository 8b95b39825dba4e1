"""Queue URLs: parsed leniently, shown with the password masked, and explained in one line when they are wrong.

Every message about a URL goes through :func:`display_url` or
:func:`mask_url`, so no password reaches a log line, a repr or an error,
whatever characters it holds.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["describe_parse_error", "did_you_mean", "display_url", "mask_url", "parse_url"]

#: ``scheme://[credentials@]h1:p1,h2:p2[/path][?query]``: a URL naming several hosts (a cluster's nodes).
_SEVERAL_HOSTS = re.compile(
    r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?)(?P<hosts>[^/?#@]*,[^/?#@]*)(?P<tail>.*)$", re.S
)
#: ``scheme://userinfo@host...`` where the userinfo runs to the LAST ``@`` before the path, as browsers read it.
_AUTHORITY = re.compile(r"^(?P<scheme>[^:/?#]+://)(?P<userinfo>[^/?#]*)@(?P<rest>[^@/?#]*(?:[/?#].*)?)$", re.S)
MASK = "***"


def _encode_userinfo_at_signs(raw: str) -> str:
    """``user:p@ss@host`` as ``user:p%40ss@host``: a password may hold an ``@`` its owner did not percent-encode."""
    match = _AUTHORITY.match(raw)
    if match is None or "@" not in match["userinfo"]:
        return raw
    return f"{match['scheme']}{match['userinfo'].replace('@', '%40')}@{match['rest']}"


def parse_url(raw: str) -> URL:
    """``make_url(raw)``, leniently: an unencoded ``@`` in the password, and URLs naming several hosts.

    Several hosts become repeated ``host`` query parameters
    (``?host=h1:p1&host=h2:p2``, SQLAlchemy's and psycopg's convention); a
    backend that takes several (a cluster's startup nodes) reads them there.
    Raises ``ValueError`` or SQLAlchemy's ``ArgumentError`` when it cannot.
    """
    from sqlalchemy.engine import make_url

    raw = _encode_userinfo_at_signs(raw)
    try:
        return make_url(raw)
    except ValueError:
        several = _SEVERAL_HOSTS.match(raw)
        if several is None:
            raise
        hosts = [("host", host) for host in several["hosts"].split(",")]
        return make_url(several["head"] + several["tail"]).update_query_pairs(hosts, append=True)


def display_url(url: URL) -> str:
    """The URL as its owner wrote it, password masked and the database part not percent-encoded.

    ``sqlite:///:memory:`` stays ``sqlite:///:memory:`` (SQLAlchemy renders
    ``%3Amemory%3A``), and a password with any characters is one ``***``.
    """
    from sqlalchemy.engine import URL

    credentials_and_host = URL.create(url.drivername, url.username, url.password, url.host, url.port)
    bare = credentials_and_host.render_as_string(hide_password=True)
    database = f"/{url.database}" if url.database else ""
    query = f"?{urlencode(sorted(url.query.items()), doseq=True)}" if url.query else ""
    return f"{bare}{database}{query}"


def mask_url(text: str) -> str:
    """A URL given as text with its password masked, even when it cannot be parsed."""
    try:
        return display_url(parse_url(text))
    except Exception:  # unparsable: hide everything between the scheme and the last '@'
        scheme, sep, rest = text.partition("://")
        if not sep or "@" not in rest:
            return text
        return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"


def did_you_mean(scheme: str, known: Iterable[str]) -> str:
    """``"; did you mean postgresql://?"`` for a near miss among ``known`` schemes, else ``"."``."""
    close = difflib.get_close_matches(scheme.lower(), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}://?" if close else "."


def describe_parse_error(raw: str) -> str:
    """Why ``raw`` is not a URL, in words that name no password."""
    _, sep, rest = raw.partition("://")
    if not sep:
        return "it has no scheme:// (expected e.g. sqlite:///polyqueue.db or postgresql://user@host/db)"
    host_and_port = re.split(r"[/?#]", rest.rpartition("@")[2], maxsplit=1)[0]
    if not host_and_port.startswith("[") and ":" in host_and_port:
        port = host_and_port.rpartition(":")[2]
        if port and not port.isdigit():
            return f"its port {port[:20]!r} is not a number"
    return "it is not of the form scheme://user:password@host:port/database"
