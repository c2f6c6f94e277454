"""The HTTP providers (OpenAI-compatible, Anthropic) against the fake LLM server over real HTTP."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from orchestration.errors import ProviderError
from orchestration.llm.providers.anthropic import AnthropicProvider
from orchestration.llm.providers.base import Provider
from orchestration.llm.providers.http import KeepAliveClient
from orchestration.llm.providers.openai import OpenAIProvider
from orchestration.llm.providers.retry_after import parse_retry_after
from tests.fakes.llm_server import FakeLLMClient, FakeLLMServer

KEY = "sk-FAKE-never-in-messages-0123456789"
USER = [{"role": "user", "content": "Can't login since update v3.2"}]
MakeProvider = Callable[[FakeLLMServer, str | None], Provider]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # Providers get a client the module closes, so no pooled socket outlives the tests (and
    # one client, because building its TLS context costs ~20 ms).
    with httpx.Client() as client:
        yield client


@pytest.fixture(scope="module")
def keepalive() -> Iterator[KeepAliveClient]:
    client = KeepAliveClient()
    yield client
    client.close()


@pytest.fixture(params=["openai", "anthropic"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["keep-alive", "httpx"])
def make(request: pytest.FixtureRequest, api: str, http: httpx.Client,
         keepalive: KeepAliveClient) -> MakeProvider:
    """``make(fake server, api_key)``: the provider under test, pointed at that server, over
    the default keep-alive client or an injected ``httpx.Client``."""
    client: httpx.Client | KeepAliveClient = keepalive if request.param == "keep-alive" else http
    if api == "openai":
        return lambda fake, key: OpenAIProvider("openai", fake.url, key, client=client)
    return lambda fake, key: AnthropicProvider("anthropic", fake.root_url, key, client=client)


@pytest.fixture
def provider(make: MakeProvider, server: FakeLLMServer) -> Provider:
    return make(server, KEY)


def failure(provider: Provider, model: str = "m", timeout: float | None = 2.0) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.complete(USER, model=model, timeout=timeout)
    error = caught.value
    # The whole report a log or the runs table could show: message, repr, chained causes.
    report = "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)
    assert KEY not in report and KEY[-10:] not in report
    return error


# -- both providers ----------------------------------------------------------------------------

def test_happy_path_returns_text_and_usage(provider: Provider, control: FakeLLMClient) -> None:
    control.configure("m", reply="Please reset your password.", prompt_tokens=42,
                      completion_tokens=5)

    text, usage = provider.complete(USER, model="m", timeout=2.0)

    assert text == "Please reset your password."
    assert (usage.prompt_tokens, usage.completion_tokens) == (42, 5)
    stats = control.stats()["m"]
    assert stats["statuses"] == {"200": 1} and stats["with_auth"] == 1


def test_default_reply_echoes_the_prompt(provider: Provider, control: FakeLLMClient) -> None:
    text, usage = provider.complete(USER, model="echo-model", timeout=2.0)

    assert text == "[echo-model] echo: Can't login since update v3.2"
    assert usage.prompt_tokens == 5 and usage.completion_tokens == len(text.split())


def test_no_key_sends_no_auth_header(make: MakeProvider, server: FakeLLMServer,
                                     control: FakeLLMClient) -> None:
    make(server, None).complete(USER, model="m", timeout=2.0)

    assert control.stats()["m"]["without_auth"] == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable_with_status(
        provider: Provider, control: FakeLLMClient, status: int) -> None:
    control.configure("m", status_sequence=[status])

    error = failure(provider)

    assert error.status == status and error.retryable and error.retry_after is None
    assert str(status) in str(error)


@pytest.mark.parametrize("retry_after", [7, 0.5])
def test_429_is_retryable_and_carries_retry_after_seconds(
        provider: Provider, control: FakeLLMClient, retry_after: float) -> None:
    control.configure("m", status_sequence=[429], retry_after=retry_after)

    error = failure(provider)

    assert error.status == 429 and error.retryable
    assert error.retry_after == retry_after


def test_503_retry_after_as_an_http_date(provider: Provider, control: FakeLLMClient) -> None:
    control.configure("m", status_sequence=[503], retry_after=formatdate(time.time() + 30,
                                                                        usegmt=True))

    error = failure(provider)

    assert error.status == 503 and error.retry_after is not None
    assert 25 <= error.retry_after <= 31


def test_429_without_retry_after(provider: Provider, control: FakeLLMClient) -> None:
    control.configure("m", status_sequence=[429])

    assert failure(provider).retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_final(provider: Provider, control: FakeLLMClient, status: int) -> None:
    control.configure("m", status_sequence=[status], retry_after=3)

    error = failure(provider)

    assert error.status == status and not error.retryable and error.retry_after is None


def test_garbage_body_is_a_retryable_provider_error(
        provider: Provider, control: FakeLLMClient) -> None:
    control.configure("m", garbage=True)

    error = failure(provider)

    assert error.retryable and error.status is None and "malformed" in str(error)


def test_hang_times_out_as_retryable(provider: Provider, control: FakeLLMClient) -> None:
    control.configure("m", hang=True)

    # The fake holds a hanging request for 60 s, then closes it unanswered (a different
    # error): "timed out" is the call's own 0.3 s timeout.
    error = failure(provider, timeout=0.3)

    assert error.retryable and error.status is None and "timed out" in str(error)


def test_connection_refused_is_retryable(make: MakeProvider) -> None:
    gone = FakeLLMServer().start()
    gone.stop()

    error = failure(make(gone, KEY))

    assert error.retryable and error.status is None and "ConnectError" in str(error)


def test_latency_within_the_timeout_still_answers(
        provider: Provider, control: FakeLLMClient) -> None:
    control.configure("m", latency_ms=100, reply="late but fine")

    assert provider.complete(USER, model="m", timeout=2.0)[0] == "late but fine"


def test_params_are_passed_through(provider: Provider, control: FakeLLMClient) -> None:
    provider.complete(USER, model="m", timeout=2.0, temperature=0.2, max_tokens=50)

    sent = control.stats()["m"]["last_request"]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50


# -- Anthropic specifics -----------------------------------------------------------------------

@pytest.fixture
def anthropic(server: FakeLLMServer, http: httpx.Client) -> AnthropicProvider:
    return AnthropicProvider("anthropic", server.root_url, KEY, client=http)


def test_anthropic_maps_system_messages_to_the_system_field(
        anthropic: AnthropicProvider, control: FakeLLMClient) -> None:
    messages = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Can't login"},
        {"role": "assistant", "content": "Which version?"},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "v3.2"},
    ]

    text, usage = anthropic.complete(messages, model="claude", timeout=2.0)

    sent = control.stats()["claude"]["last_request"]
    assert sent["system"] == "You are a support agent.\n\nAnswer in English."
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["max_tokens"] == 1024
    assert text == "[claude] echo: v3.2"
    assert usage.prompt_tokens == 13  # words of system + turns, as the fake counts them


def test_anthropic_without_system_messages_sends_no_system(
        anthropic: AnthropicProvider, control: FakeLLMClient) -> None:
    anthropic.complete(USER, model="claude", timeout=2.0)

    assert "system" not in control.stats()["claude"]["last_request"]


def test_anthropic_refuses_unknown_roles_before_sending(
        anthropic: AnthropicProvider, control: FakeLLMClient) -> None:
    with pytest.raises(ProviderError) as caught:
        anthropic.complete([{"role": "tool", "content": "42"}], model="claude", timeout=2.0)

    assert not caught.value.retryable and "tool" in str(caught.value)
    assert control.stats() == {}


def test_anthropic_529_overloaded_is_retryable_with_retry_after(
        anthropic: AnthropicProvider, control: FakeLLMClient) -> None:
    control.configure("claude", status_sequence=[529], retry_after=4)

    error = failure(anthropic, model="claude")

    assert error.status == 529 and error.retryable and error.retry_after == 4.0
    assert "overloaded_error" in str(error)


def _anthropic_with(body: Any, status: int = 200) -> tuple[AnthropicProvider, httpx.Client]:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages"
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert request.headers["x-api-key"] == KEY
        assert request.headers["content-type"] == "application/json"
        return httpx.Response(status, content=json.dumps(body).encode())

    client = httpx.Client(transport=httpx.MockTransport(answer))
    return AnthropicProvider("anthropic", "https://api.example/", KEY, client=client), client


def test_anthropic_concatenates_text_blocks_and_skips_others() -> None:
    provider, client = _anthropic_with({
        "content": [{"type": "text", "text": "Hello, "},
                    {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
                    {"type": "text", "text": "world."}],
        "usage": {"input_tokens": 9, "output_tokens": 3}})
    with client:
        text, usage = provider.complete(USER, model="claude", timeout=1.0)

    assert text == "Hello, world."
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 3)


@pytest.mark.parametrize("body", [{}, {"content": None}, {"content": [{"type": "text"}]},
                                  {"content": [], "usage": {"input_tokens": "many"}}, [1]])
def test_anthropic_malformed_bodies_are_retryable(body: Any) -> None:
    provider, client = _anthropic_with(body)
    with client, pytest.raises(ProviderError) as caught:
        provider.complete(USER, model="claude", timeout=1.0)

    assert caught.value.retryable and "malformed" in str(caught.value)


def test_anthropic_error_text_from_the_server_is_not_repeated() -> None:
    provider, client = _anthropic_with(
        {"type": "error", "error": {"type": "authentication_error",
                                    "message": f"invalid x-api-key {KEY}"}}, status=401)
    with client:
        error = failure(provider, model="claude")

    assert error.status == 401 and not error.retryable
    assert "authentication_error" in str(error)


# -- Retry-After parsing -----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("3", 3.0), (" 0.25 ", 0.25), ("0", 0.0), (None, None), ("", None), ("soon", None),
    ("-1", None), ("nan", None), ("inf", None),
    ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2015 07:28:30 -0000", 30.0),
    ("Wed, 21 Oct 2015 09:28:30 +0200", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT

    assert parse_retry_after(value, now=now) == expected
