"""Streaming providers on canned server-sent events (httpx MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from orchestration.errors import ErrorKind, ProviderError
from orchestration.llm.providers.anthropic import AnthropicProvider
from orchestration.llm.providers.openai import OpenAIProvider
from orchestration.llm.providers.sse import Chunk, parse

MESSAGES = [{"role": "user", "content": "hi"}]


def client(body: bytes, status: int = 200,
           seen: list[dict[str, object]] | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        return httpx.Response(status, content=body, headers={
            "content-type": "text/event-stream", "retry-after": "2"})
    return httpx.Client(transport=httpx.MockTransport(handler))


def openai_chunk(**delta: object) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}) + "\n\n"


def test_sse_lines_become_events() -> None:
    lines = ["event: a", "data: 1", "data: 2", "", ": comment", "data:x", "", "data: tail"]
    assert list(parse(iter(lines))) == [("a", "1\n2"), (None, "x"), (None, "tail")]


def test_openai_chunks_then_usage_then_done() -> None:
    seen: list[dict[str, object]] = []
    body = (openai_chunk(role="assistant", content="") + openai_chunk(content="Hel")
            + openai_chunk(content="lo") + "data: " + json.dumps(
                {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
            + "\n\ndata: [DONE]\n\n").encode()
    provider = OpenAIProvider("fake", "http://llm/v1", "sk", client=client(body, seen=seen))
    chunks = list(provider.stream(MESSAGES, model="m", first_token_timeout=5))
    assert chunks == [Chunk("Hel"), Chunk("lo"), Chunk(prompt_tokens=5, completion_tokens=2)]
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}


def test_a_stream_that_ends_without_done_broke_off() -> None:
    provider = OpenAIProvider("fake", "http://llm/v1", "sk",
                              client=client(openai_chunk(content="Hel").encode()))
    stream = provider.stream(MESSAGES, model="m", first_token_timeout=5)
    assert next(stream) == Chunk("Hel")
    with pytest.raises(ProviderError, match="ended before its last event") as caught:
        next(stream)
    assert caught.value.retryable


@pytest.mark.parametrize(("status", "retryable", "retry_after"),
                         [(503, True, 2.0), (429, True, 2.0), (400, False, None)])
def test_an_error_status_before_any_event(status: int, retryable: bool,
                                          retry_after: float | None) -> None:
    provider = OpenAIProvider("fake", "http://llm/v1", "sk",
                              client=client(b'{"error": {}}', status=status))
    with pytest.raises(ProviderError, match=f"HTTP {status}") as caught:
        list(provider.stream(MESSAGES, model="m", first_token_timeout=5))
    assert (caught.value.retryable, caught.value.retry_after) == (retryable, retry_after)


def anthropic(kind: str, **data: object) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def test_anthropic_deltas_and_usage() -> None:
    body = (anthropic("message_start", message={"usage": {"input_tokens": 9}})
            + anthropic("content_block_delta", delta={"type": "text_delta", "text": "Hi"})
            + anthropic("ping")
            + anthropic("content_block_delta", delta={"type": "text_delta", "text": "!"})
            + anthropic("message_delta", usage={"output_tokens": 2})
            + anthropic("message_stop")).encode()
    provider = AnthropicProvider("claude", "http://llm", "sk", client=client(body))
    assert list(provider.stream(MESSAGES, model="c", first_token_timeout=5)) == [
        Chunk("Hi"), Chunk("!"), Chunk(prompt_tokens=9, completion_tokens=2)]


def test_anthropic_error_event_mid_stream() -> None:
    body = (anthropic("content_block_delta", delta={"type": "text_delta", "text": "Hi"})
            + anthropic("error", error={"type": "overloaded_error", "message": "sk-secret"})
            ).encode()
    provider = AnthropicProvider("claude", "http://llm", "sk", client=client(body))
    stream = provider.stream(MESSAGES, model="c", first_token_timeout=5)
    assert next(stream) == Chunk("Hi")
    with pytest.raises(ProviderError, match="overloaded_error mid-stream") as caught:
        next(stream)
    assert "sk-secret" not in str(caught.value)


def test_a_read_timeout_is_a_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)
    provider = OpenAIProvider("fake", "http://llm/v1", "sk",
                              client=httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(ProviderError, match=r"no chunk from m within 0\.5 s") as caught:
        list(provider.stream(MESSAGES, model="m", first_token_timeout=0.5))
    assert caught.value.kind is ErrorKind.TIMEOUT
