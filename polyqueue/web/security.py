"""The dashboard's two guards: an access token (required off loopback) and CSRF tokens on every POST.

The access token arrives as ``Authorization: Bearer TOKEN`` (scripts,
Prometheus) or once as ``?token=TOKEN``, which the dashboard trades for an
HttpOnly, SameSite=Strict cookie and a redirect that drops it from the URL.
CSRF protection is a signed double-submit token: a random nonce with its
HMAC under a per-process secret, set as a cookie and repeated in every form;
a POST passes only when the form's token equals the cookie's and the
signature holds, and when its ``Origin`` (if sent) is the dashboard's own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

__all__ = ["CsrfGuard", "is_loopback", "tokens_match"]

#: Cookie names, prefixed so they never clash with an application on the same host.
TOKEN_COOKIE = "polyqueue_token"
CSRF_COOKIE = "polyqueue_csrf"


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the dashboard on this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one; False for none."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class CsrfGuard:
    """Issues and checks signed double-submit CSRF tokens under a secret of its own (one per process)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new token: ``nonce.signature``."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` is one this guard issued (its signature holds)."""
        if not token or "." not in token:
            return False
        nonce, signature = token.rsplit(".", 1)
        return hmac.compare_digest(signature, self._sign(nonce))

    def accepts(self, form_token: str | None, cookie_token: str | None) -> bool:
        """A POST's check: the form repeats the cookie's token, and it is one this guard issued."""
        return tokens_match(form_token, cookie_token or "") and self.valid(cookie_token)
