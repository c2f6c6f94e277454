"""The redactor (``orchestration/redaction.py``): deny-listed fields, secret shapes in text,
the workflow's ``redact=`` hook and ``ORCH_REDACT_FIELDS``, and the structlog processor.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from orchestration import Workflow, WorkflowDefinitionError
from orchestration.app import Orchestrator
from orchestration.core.redaction import REDACTED, Redactor, structlog_processor
from orchestration.core.settings import Settings


@pytest.fixture
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("field", [
    "api_key", "API_KEY", "apikey", "api-key", "X-Api-Key", "Authorization", "password",
    "passwd", "secret", "client_secret", "token", "access_token", "refresh_token",
    "private_key",
])
def test_every_default_field_is_redacted_whatever_its_case(redactor: Redactor,
                                                           field: str) -> None:
    assert redactor({field: "anything at all", "keep": "me"}) == {field: REDACTED,
                                                                  "keep": "me"}


def test_fields_are_redacted_at_any_depth_and_whatever_their_value(redactor: Redactor) -> None:
    value = {"user": {"name": "ann", "password": {"nested": "x"}},
             "calls": [{"headers": {"Authorization": ["a", "b"]}}, ("token", 3)],
             "count": 3, "ratio": 0.5, "flag": True, "none": None}
    assert redactor(value) == {
        "user": {"name": "ann", "password": REDACTED},
        "calls": [{"headers": {"Authorization": REDACTED}}, ["token", 3]],
        "count": 3, "ratio": 0.5, "flag": True, "none": None,
    }


def test_the_value_redacted_is_a_copy(redactor: Redactor) -> None:
    value = {"password": "p", "inner": {"token": "t"}, "items": ["Bearer abcdefgh12345"]}
    original = copy.deepcopy(value)
    redactor(value)
    assert value == original


@pytest.mark.parametrize(("text", "secret"), [
    ("Authorization: Bearer SECRET-TOKEN-abcdef123", "SECRET-TOKEN-abcdef123"),
    ("header was bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ("openai said no to sk-live-SECRET123456789 today", "sk-live-SECRET123456789"),
    ("anthropic key sk-ant-api03-abcdefghijklmnop", "sk-ant-api03-abcdefghijklmnop"),
    ("POST /v1?api_key=abcdef123456&x=1", "abcdef123456"),
    ("x-api-key: 0123456789abcdef", "0123456789abcdef"),
    ("password=hunter2hunter2", "hunter2hunter2"),
    ("SECRET: s3cr3t-value-42", "s3cr3t-value-42"),
    ("token = tok_9f8e7d6c5b", "tok_9f8e7d6c5b"),
])
def test_secret_shapes_are_scrubbed_from_text(redactor: Redactor, text: str,
                                              secret: str) -> None:
    scrubbed = redactor.text(text)
    assert scrubbed is not None
    assert secret not in scrubbed
    assert REDACTED in scrubbed
    assert redactor({"message": text})["message"] == scrubbed  # strings inside values too


@pytest.mark.parametrize("text", [
    "provider returned 503", "the bearer of bad news", "sk-short", "token count: 42",
    "ticket 48291 can't login since update v3.2",
])
def test_ordinary_text_is_left_alone(redactor: Redactor, text: str) -> None:
    assert redactor.text(text) == text


def test_text_of_none_is_none(redactor: Redactor) -> None:
    assert redactor.text(None) is None


def test_extra_fields_and_the_hook_apply(redactor: Redactor) -> None:
    def mask_ssn(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("***-**-" + v[-4:] if k == "ssn_full" else v) for k, v in value.items()}
        return value

    custom = Redactor(["SSN", "iban"], hook=mask_ssn)
    assert custom({"ssn": "123-45-6789", "IBAN": "DE89", "ssn_full": "123-45-6789",
                   "api_key": "k"}) == {"ssn": REDACTED, "IBAN": REDACTED,
                                        "ssn_full": "***-**-6789", "api_key": REDACTED}
    # The hook runs first, then the deny list: a hook cannot let a secret field through.
    leaky = Redactor(hook=lambda value: {**value, "token": "re-added"})
    assert leaky({"a": 1})["token"] == REDACTED


def test_a_workflows_redactor_has_its_hook_and_the_settings_fields(tmp_path: Path) -> None:
    app = Orchestrator(Settings(database_url=f"sqlite:///{tmp_path / 'r.db'}",
                                redact_fields="ssn, iban"))  # type: ignore[arg-type]
    try:
        flow = Workflow("redact_unit", app=app,
                        redact=lambda v: {k: "x" if k == "email" else w for k, w in v.items()})

        @flow.task
        def echo(text: str) -> str:
            return text

        scrub = flow.redactor
        assert scrub({"ssn": "1", "iban": "2", "email": "a@b.c", "password": "p", "k": "v"}) == {
            "ssn": REDACTED, "iban": REDACTED, "email": "x", "password": REDACTED, "k": "v"}
        with pytest.raises(WorkflowDefinitionError, match="redact must be a callable"):
            Workflow("redact_bad", app=app, redact="not callable")  # type: ignore[arg-type]
    finally:
        app.shutdown()


def test_structlog_processor_redacts_field_names_and_values(redactor: Redactor) -> None:
    process = structlog_processor(Redactor(["customer_ssn"]))
    event = {"event": "calling provider with Bearer abcdefgh12345678", "api_key": "sk-1",
             "customer_ssn": "123", "headers": {"Authorization": "x"}, "attempt": 2,
             "error": "RuntimeError('sent sk-live-SECRET123456789')"}
    assert process(None, "warning", event) == {
        "event": f"calling provider with {REDACTED}", "api_key": REDACTED,
        "customer_ssn": REDACTED, "headers": {"Authorization": REDACTED}, "attempt": 2,
        "error": f"RuntimeError('sent {REDACTED}')",
    }
