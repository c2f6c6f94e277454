"""Trigger and schedule declarations: payload paths, filters, dedupe keys, checks."""

from __future__ import annotations

import pytest

from orchestration.define.triggers import PathNotFound, make_schedule, make_trigger, parse_path
from orchestration.errors import WorkflowDefinitionError

PAYLOAD = {"ticket": {"id": 7, "description": "cannot log in", "tags": ["a", "b"]},
           "a.b": {"c": 1}}


@pytest.mark.parametrize(("path", "value"), [
    ("$", PAYLOAD), ("$.ticket.description", "cannot log in"), ("$.ticket.tags[1]", "b"),
    ('$["a.b"].c', 1), ("$['a.b']", {"c": 1}),
])
def test_paths_read_the_payload(path: str, value: object) -> None:
    assert parse_path(path, "here").extract(PAYLOAD) == value


@pytest.mark.parametrize(("path", "at"), [
    ("$.ticket.subject", "$.ticket.subject"), ("$.ticket.tags[5]", "$.ticket.tags[5]"),
    ("$.ticket.id.x", "$.ticket.id.x"),
])
def test_a_missing_path_names_the_part_that_failed(path: str, at: str) -> None:
    with pytest.raises(PathNotFound) as caught:
        parse_path(path, "here").extract(PAYLOAD)
    assert caught.value.at == at and path in str(caught.value)


@pytest.mark.parametrize("path", ["$.ticket..id", "$.ticket[x]", "$ticket", "$.[0]"])
def test_a_malformed_path_is_a_definition_error(path: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"trigger 't', inputs\.text"):
        make_trigger("t", event="e", workflow="w", inputs={"text": path})
    with pytest.raises(WorkflowDefinitionError, match=r"trigger 't', filter"):
        make_trigger("t", event="e", workflow="w", filter={path: 1})


def test_an_input_not_starting_with_dollar_is_a_constant() -> None:
    trigger = make_trigger("t", event="e", workflow="w", inputs={"text": "ticket.id", "n": 3})
    assert trigger.run_inputs({}) == {"text": "ticket.id", "n": 3}


def test_a_trigger_maps_filters_and_dedupes() -> None:
    trigger = make_trigger("new_ticket", event="zendesk.ticket.created", workflow="support",
                           inputs={"text": "$.ticket.description", "channel": "email"},
                           filter={"$.ticket.tags[0]": "a"}, dedupe="$.ticket.id")
    assert trigger.run_inputs(PAYLOAD) == {"text": "cannot log in", "channel": "email"}
    assert trigger.matches(PAYLOAD)
    assert not trigger.matches({"ticket": {"tags": ["z"]}})
    assert not trigger.matches({})
    assert trigger.dedupe_key("evt-1", PAYLOAD) == "7"
    assert make_trigger("t", event="e", workflow="w").dedupe_key("evt-1", PAYLOAD) == "evt-1"


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "every minute"}, "cron must be a cron expression"),
    ({"cron": "* * * * *", "overlap": "never"}, "overlap must be one of skip, allow, queue"),
    ({"cron": "* * * * *", "inputs": {"x": object()}}, "inputs.x: must be JSON"),
])
def test_a_bad_schedule_is_a_definition_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=message):
        make_schedule("nightly", workflow="w", **options)  # type: ignore[arg-type]
