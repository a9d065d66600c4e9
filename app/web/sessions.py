"""The dashboard's browser session: an API key entered once becomes a signed cookie.

The cookie never holds the key, nor its hash: it holds the key's row id and an expiry, signed
with HMAC-SHA256 under a server secret (``v1.<key id>.<expires>.<signature>``). Every use
still checks that the key exists and is not revoked (``require_key`` caches that check like a
Bearer key's). The cookie is HttpOnly and SameSite=Strict; on top of that, a request that
changes state and is authorised by the cookie must carry a CSRF token (a header for the JS
API calls, a hidden field for the dashboard's own forms), derived from the session by the
same secret, which a page of another site can neither read nor set.

The secret is ``TB_SESSION_SECRET`` where the settings have one (several API replicas behind
one address need the same secret), else random per process: a restart logs browsers out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from app.errors import ProblemError

COOKIE = "tb_session"
#: the login form's own cookie: a random nonce its CSRF token is bound to (``login_token``)
LOGIN_COOKIE = "tb_login"
LOGIN_TTL_S = 3600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_TTL_S = 12 * 3600
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_VERSION = "v1"


class Forbidden(ProblemError):
    status, title = 403, "Forbidden"


def new_secret(configured: str | None = None) -> bytes:
    """The signing secret: the configured one, or 32 random bytes."""
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    return secrets.token_bytes(32)


def _sign(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: bytes, key_id: str, *, ttl_s: float = SESSION_TTL_S) -> str:
    """A session token for the API key whose row id is ``key_id``."""
    payload = f"{_VERSION}.{key_id}.{int(time.time() + ttl_s)}"
    return f"{payload}.{_sign(secret, payload)}"


def key_of(secret: bytes, token: str) -> str | None:
    """The key id a token names, or None when it is malformed, forged or expired."""
    payload, _, signature = token.rpartition(".")
    parts = payload.split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not parts[1]:
        return None
    if not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    try:
        expires = int(parts[2])
    except ValueError:
        return None
    return parts[1] if expires > time.time() else None


def csrf_token(secret: bytes, token: str | None) -> str:
    """The CSRF token of a session (``token``), or of the anonymous dashboard (None: the
    app runs without API keys, but its forms still refuse other sites' posts)."""
    return _sign(secret, f"csrf:{token or 'anonymous'}")


def csrf_ok(secret: bytes, token: str | None, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(secret, token), given or "")


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def login_token(secret: bytes, nonce: str) -> str:
    """The login form's CSRF token, bound to the browser's own ``LOGIN_COOKIE`` nonce. The
    anonymous token is the same for every visitor, so another site could read it from the
    login page and make a victim's browser log in with the attacker's key (login CSRF: what
    the victim uploads then goes to the attacker's tenant); a nonce in a SameSite=Strict
    cookie is one that site can neither read nor send."""
    return _sign(secret, f"csrf:login:{nonce}")


def login_ok(secret: bytes, nonce: str | None, given: str | None) -> bool:
    return bool(nonce and given) and hmac.compare_digest(
        login_token(secret, nonce or ""), given or ""
    )
