"""``Retry-After``: how long a provider asks to be left alone, read from its response."""

from __future__ import annotations

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

from orchestration.llm.providers.http import HTTPResponse

# 529 is Anthropic's "overloaded": the same promise as a 503, so it carries Retry-After too.
_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})

def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None if absent or unparsable.

    Accepts delay-seconds (``"2"``, also fractional ``"0.5"``) and an HTTP date; a date in
    the past gives 0.0. ``now`` (epoch seconds) is for tests.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate_to_datetime leaves "-0000" naive, not local.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_for(response: HTTPResponse) -> float | None:
    """The ``Retry-After`` of a 429/503 (or Anthropic 529) response; None for other statuses."""
    if response.status not in _RETRY_AFTER_STATUSES:
        return None
    return parse_retry_after(response.headers.get("retry-after"))
