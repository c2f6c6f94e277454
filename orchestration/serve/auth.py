"""Who may post events: a bearer token, or an HMAC-SHA256 signature of the raw body.

Senders sign the way GitHub, Zendesk and Stripe-style webhooks do: the hex HMAC-SHA256 of
the exact bytes of the body under a shared secret, sent as ``sha256=<hex>`` in
``X-Orchestrate-Signature`` (or GitHub's ``X-Hub-Signature-256``). Every comparison is
constant-time (:func:`hmac.compare_digest`), and no credential is ever logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from orchestration.core.settings import Settings

SIGNATURE_HEADERS = ("x-orchestrate-signature", "x-hub-signature-256")
SIGNATURE_PREFIX = "sha256="


class Verdict(StrEnum):
    """What the headers alone say about a request."""

    ALLOWED = "allowed"  # a good token, or no authentication configured (loopback only)
    NEEDS_BODY = "needs_body"  # a signature to check against the raw body
    MISSING = "missing"  # authentication is configured and the request brings none
    BAD_TOKEN = "bad_token"  # a bearer token that is not the configured one


@dataclass(frozen=True)
class Credentials:
    """The configured token and secret, as bytes (kept out of ``repr``)."""

    token: bytes | None = field(default=None, repr=False)
    secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """``ORCH_SERVE_TOKEN`` and ``ORCH_WEBHOOK_SECRET`` (settings refuse empty ones)."""
        token, secret = settings.serve_token, settings.webhook_secret
        return cls(token=token.get_secret_value().encode() if token else None,
                   secret=secret.get_secret_value().encode() if secret else None)

    @property
    def configured(self) -> bool:
        """True when requests must authenticate."""
        return self.token is not None or self.secret is not None

    def check_headers(self, headers: Mapping[str, str]) -> Verdict:
        """Judge a request by its headers (``headers`` keys lower-case, as ASGI gives them).

        A bearer token is checked here; a signature can only be checked with the body
        (:meth:`check_signature`), so it yields ``NEEDS_BODY``.
        """
        if not self.configured:
            return Verdict.ALLOWED
        authorization = headers.get("authorization")
        if authorization is not None and self.token is not None:
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    presented.strip().encode(), self.token):
                return Verdict.ALLOWED
            if self.secret is None or _signature_header(headers) is None:
                return Verdict.BAD_TOKEN
        if self.secret is not None and _signature_header(headers) is not None:
            return Verdict.NEEDS_BODY
        return Verdict.MISSING

    def check_signature(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True when a signature header holds the HMAC-SHA256 of ``body`` under the secret."""
        presented = _signature_header(headers)
        if self.secret is None or presented is None:
            return False
        if not presented.lower().startswith(SIGNATURE_PREFIX):
            return False
        expected = sign(self.secret, body)
        return hmac.compare_digest(presented.strip().lower().encode(), expected.encode())


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _signature_header(headers: Mapping[str, str]) -> str | None:
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is not None:
            return value
    return None
