"""Streamed model answers: server-sent events over httpx, read as they arrive.

:class:`StreamingHTTP` POSTs a JSON body and hands the caller the response's SSE events
``(event, data)`` one by one (``httpx.Client.stream``). Timeouts: connecting and every
read wait at most ``first_token_timeout`` (so it also bounds a stall between chunks);
the caller checks the total deadline between chunks. An HTTP error status, a timeout or
a broken connection becomes a :class:`ProviderError` (retryable unless a 4xx other
than 429), as for a whole answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from orchestration.errors import ErrorKind, ProviderError
from orchestration.llm.providers.retry_after import parse_retry_after

_RETRY_AFTER = frozenset({429, 503, 529})


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer: text, or (once, at the end) the usage reported."""

    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class StreamingHTTP:
    """One ``httpx.Client`` per provider for streamed calls (thread-safe, pooled)."""

    def __init__(self, name: str, client: httpx.Client | None = None) -> None:
        self._name = name
        self._client = client
        self._owned = client is None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=None)
        return self._client

    def close(self) -> None:
        """Close the client this provider made."""
        if self._owned and self._client is not None:
            self._client.close()
            self._client = None

    def events(self, url: str, body: object, headers: dict[str, str], *, model: str,
               first_token_timeout: float) -> Iterator[tuple[str | None, str]]:
        """POST ``body``; yield the answer's SSE events as ``(event name, data)``."""
        timeout = httpx.Timeout(first_token_timeout)
        try:
            with self._http().stream("POST", url, json=body, headers={
                    "Accept": "text/event-stream", **headers}, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    status = response.status_code
                    raise ProviderError(f"{self._name}: HTTP {status} from {model}",
                                        status=status,
                                        retryable=status == 429 or status >= 500,
                                        retry_after=parse_retry_after(
                                            response.headers.get("retry-after"))
                                        if status in _RETRY_AFTER else None)
                yield from parse(response.iter_lines())
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{self._name}: no chunk from {model} within "
                                f"{first_token_timeout:g} s", kind=ErrorKind.TIMEOUT) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"{self._name}: stream from {model} broke off "
                                f"({type(exc).__name__})") from exc


def parse(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """SSE lines to ``(event, data)`` events (multi-line data joined; comments skipped)."""
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        yield name, "\n".join(data)


def broke_off(provider: str, model: str) -> ProviderError:
    """The error of a stream that ended before its last event (a dropped connection)."""
    return ProviderError(f"{provider}: stream from {model} ended before its last event")
