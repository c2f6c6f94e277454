"""Streaming answers of the fake LLM server: OpenAI and Anthropic server-sent events.

A request with ``"stream": true`` is answered ``200`` with ``text/event-stream`` in HTTP
chunked encoding, one event per word of the reply (see tests/fakes/llm_server.py for
how the status is chosen: an error status is answered as usual, before any event):

- OpenAI: ``data: {"choices": [{"delta": {"content": ...}}]}`` per word, a last chunk
  with ``finish_reason``, a usage chunk when ``stream_options.include_usage``, then
  ``data: [DONE]``;
- Anthropic: ``message_start`` (input tokens), ``content_block_start``,
  ``content_block_delta`` (``text_delta``) per word, ``content_block_stop``,
  ``message_delta`` (output tokens), ``message_stop``.

Faults (fields of the model's behaviour): ``first_token_delay_ms`` stalls after the
headers and before the first event; ``chunk_delay_ms`` between events;
``disconnect_after`` drops the connection after that many text events (no terminating
chunk, so the client sees a broken body). The send time of every text event is kept
(``stats()[model]["chunks_sent"]``, epoch seconds) for latency measurements.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

_WORDS = re.compile(r"\S+\s*|\s+")


class StreamBehaviour(Protocol):
    """The behaviour fields a streamed answer reads."""

    first_token_delay_ms: float
    chunk_delay_ms: float
    disconnect_after: int | None


def words(text: str) -> list[str]:
    """The reply cut into chunks: each word with the space after it."""
    return _WORDS.findall(text) or [text]


def openai_events(model: str, text: str, prompt: int, completion: int,
                  include_usage: bool) -> Iterator[tuple[bytes, bool]]:
    """(SSE bytes, carries text) of an OpenAI chat-completions stream."""
    ident = f"chatcmpl-fake-{time.monotonic_ns()}"

    def chunk(delta: dict[str, Any], finish: str | None = None,
              usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk",
                                "created": int(time.time()), "model": model,
                                "choices": [] if usage else [
                                    {"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""}), False
    for word in words(text):
        yield chunk({"content": word}), True
    yield chunk({}, "stop"), False
    if include_usage:
        yield chunk({}, usage={"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}), False
    yield b"data: [DONE]\n\n", False


def anthropic_events(model: str, text: str, prompt: int,
                     completion: int) -> Iterator[tuple[bytes, bool]]:
    """(SSE bytes, carries text) of an Anthropic messages stream."""
    def sse(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    yield sse("message_start", {"message": {
        "id": f"msg_fake_{time.monotonic_ns()}", "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1}}}), False
    yield sse("content_block_start", {"index": 0,
                                      "content_block": {"type": "text", "text": ""}}), False
    yield sse("ping", {}), False
    for word in words(text):
        yield sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                "text": word}}), True
    yield sse("content_block_stop", {"index": 0}), False
    yield sse("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": completion}}), False
    yield sse("message_stop", {}), False


def send_stream(handler: Any, events: Iterator[tuple[bytes, bool]],
                behaviour: StreamBehaviour, stopping: Callable[[float], bool],
                sent: Callable[[float], None]) -> None:
    """Write ``events`` as a chunked ``text/event-stream`` response, with the faults.

    ``stopping(seconds)`` waits and says whether the server is stopping; ``sent(t)``
    records a text event's send time.
    """
    handler.close_connection = True
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        if behaviour.first_token_delay_ms and stopping(behaviour.first_token_delay_ms / 1000):
            return
        texts = 0
        for index, (data, has_text) in enumerate(events):
            if index and behaviour.chunk_delay_ms and stopping(behaviour.chunk_delay_ms / 1000):
                return
            if has_text and behaviour.disconnect_after is not None \
                    and texts >= behaviour.disconnect_after:
                handler.connection.shutdown(socket.SHUT_RDWR)  # mid-stream: no last chunk
                return
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()
            if has_text:
                texts += 1
                sent(time.time())
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError, OSError):
        return  # the client went away (its timeout)
