"""Who may use the dashboard, and how its forms are protected from cross-site requests.

Authentication: ``ORCH_SERVE_TOKEN`` as a bearer token (API clients) or as the password
of HTTP basic auth (browsers; any user name). Unauthenticated pages get a 401 with a
``Basic`` challenge, so a browser asks for it; the API's 401 has a ``Bearer`` one (a
script calling it gets the 401, not a login prompt). With no token configured the
dashboard is open, which :func:`orchestration.serve.server.check_exposure` allows on loopback only;
then the ``Host`` header must name a loopback host too (a DNS-rebinding page cannot read
or drive it) and every page says so in its header.

CSRF: a browser resends basic credentials (or nothing, on an open loopback server) on
any request, so every state-changing request that is not bearer-authenticated must carry
the per-session token of the ``orch_csrf`` cookie (``HttpOnly; SameSite=Strict``) back in
a form field ``csrf`` or an ``X-CSRF-Token`` header; a ``Sec-Fetch-Site`` or ``Origin``
from another site is refused as well. Comparisons are constant-time; no credential is
logged or rendered.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from orchestration.observe.exporter import is_loopback
from orchestration.serve.auth import Credentials

CSRF_COOKIE = "orch_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
CHALLENGE = {"WWW-Authenticate": 'Basic realm="orchestrate", charset="UTF-8"'}
# The API's challenge: a browser script calling it must get the 401, not a login prompt.
API_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="orchestrate"'}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Principal:
    """Who made a request: how they authenticated and, for basic auth, the user name."""

    scheme: str  # "bearer", "basic" or "open" (no token configured, loopback)
    user: str | None = None

    @property
    def needs_csrf(self) -> bool:
        """True when the browser may have attached the credentials on its own."""
        return self.scheme != "bearer"

    def describe(self) -> str:
        """For the audit log: never the credential itself."""
        return f"{self.scheme}:{self.user}" if self.user else self.scheme


class Access:
    """The dashboard's gate, built from the served credentials."""

    def __init__(self, credentials: Credentials) -> None:
        self._token = credentials.token

    @property
    def open(self) -> bool:
        """True when no token is configured (loopback only)."""
        return self._token is None

    def check(self, request: Request) -> Principal:
        """The request's principal; a 401 (with a basic challenge) when it has none."""
        if self._token is None:
            host = request.headers.get("host", "")
            if not is_loopback(_hostname(host)):
                raise HTTPException(403, "no ORCH_SERVE_TOKEN is configured, so the dashboard "
                                         "answers only requests addressed to a loopback host")
            return Principal("open")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and _same(presented.strip().encode(), self._token):
            return Principal("bearer")
        if scheme == "basic":
            user, password = _basic(presented.strip())
            if password is not None and _same(password, self._token):
                return Principal("basic", user)
        path = request.url.path
        api = path.startswith("/api/") or path == "/openapi.json"
        raise HTTPException(401, "unauthorized: send ORCH_SERVE_TOKEN as a bearer token, or "
                                 "as the password of basic auth",
                            headers=API_CHALLENGE if api else CHALLENGE)


def csrf_token(request: Request) -> tuple[str, bool]:
    """The session's CSRF token, and whether it is new (and must be set as a cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(current) <= 100 and current.isascii():
        return current, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    """Keep ``token`` in the session cookie: script-proof and never sent cross-site."""
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def check_csrf(request: Request, principal: Principal, presented: str | None) -> None:
    """Refuse (403) a state-changing request a page of another site could have sent."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"refused: a cross-site request (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and \
            origin.partition("://")[2] != request.headers.get("host", ""):
        raise HTTPException(403, "refused: the request comes from another origin")
    if not principal.needs_csrf:
        return
    cookie = request.cookies.get(CSRF_COOKIE)
    given = presented or request.headers.get(CSRF_HEADER)
    if not cookie or not given or not _same(given.encode(), cookie.encode()):
        raise HTTPException(403, "refused: the CSRF token is missing or wrong (reload the "
                                 "page and try again; API clients use a bearer token)")


def secure(response: Response) -> Response:
    """Add the dashboard's security headers (no inline script or style, no framing)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _same(presented: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(presented, expected)


def _basic(value: str) -> tuple[str | None, bytes | None]:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None, None
    return user.decode("utf-8", "replace")[:100], password


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
