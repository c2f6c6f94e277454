"""The parts of pipeline files: templates, closed-set answers (and the local provider's),
the published schema."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from orchestration.core import choices
from orchestration.errors import ErrorKind, NonRetryableError
from orchestration.llm.providers.local import LABEL, LocalProvider
from orchestration.pipelines import SCHEMA_FILE, schema
from orchestration.pipelines.steps import Route, Router
from orchestration.pipelines.template import TemplateSyntaxError, parse

ROOT = Path(__file__).resolve().parents[3]

# -- templates ----------------------------------------------------------------------------


def test_a_template_renders_inputs_fields_and_json() -> None:
    template = parse("Ticket {{ text }} is {{ ticket.label }} ({{ ticket.tags.0 }}); "
                     "all: {{ ticket }}{{ missing_ok }}")
    assert template.names == ("text", "ticket", "missing_ok")
    rendered = template.render({"text": "T-1", "ticket": {"label": "billing", "tags": ["x"]},
                                "missing_ok": None})
    assert rendered == ('Ticket T-1 is billing (x); all: {"label": "billing", '
                        '"tags": ["x"]}')


@pytest.mark.parametrize(("source", "message"), [
    ("{{ a + b }}", "is not a name or name.field"),
    ("{{ __import__('os') }}", "is not a name or name.field"),
    ("{{ }}", "empty placeholder"),
    ("hello {{ name", "an unclosed '{{' at column 7"),
    ("hello }} there", "a '}}' without '{{' at column 7"),
])
def test_a_template_is_never_evaluated_only_read(source: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=re.escape(message)):
        parse(source)


def test_a_missing_field_names_the_placeholder() -> None:
    with pytest.raises(KeyError, match=r"ticket\.label"):
        parse("{{ ticket.label }}").render({"ticket": "just text"})


# -- closed-set answers -------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "expected"), [
    ("billing", "billing"), (" Billing. ", "billing"), ('"technical"', "technical"),
    (f"{LABEL} general", "general"), ("It is a technical problem.", "technical"),
    ("billing or technical", None), ("refund", None), ("", None),
])
def test_an_answer_is_normalised_to_one_choice_or_refused(answer: str,
                                                          expected: str | None) -> None:
    assert choices.normalise(answer, ["billing", "technical", "general"]) == expected


def test_the_instruction_line_carries_the_choices() -> None:
    line = choices.instruction(["a b", "c"])
    assert choices.requested([{"role": "system", "content": f"Classify.\n{line}"}]) == ["a b", "c"]
    assert choices.requested([{"role": "user", "content": "no choices here"}]) is None


def _local(system: str, user: str) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return LocalProvider().complete(messages, model="m", timeout=None)[0]


@pytest.mark.parametrize(("ticket", "expected"), [
    ("A technical question about billing", "technical"),  # the first mentioned
    ("My BILLING address changed", "billing"),
    ("Nothing in particular", "general"),  # none mentioned: the last choice
])
def test_the_local_provider_answers_a_choice_it_is_given(ticket: str, expected: str) -> None:
    system = ("Classify this ticket as: billing, technical, or general\n"
              + choices.instruction(["billing", "technical", "general"]))
    answer = _local(system, ticket)
    assert answer == f"{LABEL} {expected}"  # labelled like every local answer
    assert choices.normalise(answer, ["billing", "technical", "general"]) == expected


def test_the_local_provider_without_choices_answers_as_before() -> None:
    answer = _local("Be nice.", "hello there")
    assert answer.startswith(LABEL) and "hello there" in answer


# -- the schema ---------------------------------------------------------------------------


def _properties(node: Any, at: str = "#") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            found.append((f"{at}/properties/{name}", sub))
        for key, sub in node.items():
            found += _properties(sub, f"{at}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            found += _properties(sub, f"{at}/{index}")
    return found


def test_the_schema_is_draft_2020_12_and_every_property_says_what_it_means() -> None:
    published = schema()
    assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = _properties(published)
    assert len(properties) > 50
    missing = [at for at, sub in properties
               if not (isinstance(sub, dict) and sub.get("description"))]
    assert missing == []


def test_the_errors_a_file_may_name_are_the_engines_error_kinds() -> None:
    step = schema()["$defs"]["step"]["properties"]["errors"]
    assert step["propertyNames"]["enum"] == [kind.value for kind in ErrorKind]


def test_the_schema_ships_in_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pipelines/*.json" in config["tool"]["setuptools"]["package-data"]["orchestration"]
    assert SCHEMA_FILE.parent.name == "pipelines" and json.loads(SCHEMA_FILE.read_text())


# -- routing --------------------------------------------------------------------------


def test_a_router_names_a_workflow_this_process_does_not_know() -> None:
    router = Router("route", table={"x": Route("gone", is_step=False)}, default=None,
                    route_on="kind", reads=["kind"], find=lambda name: None, child_inputs={})
    with pytest.raises(NonRetryableError, match=r"workflow 'gone' .*not known in this process"):
        router(ctx=object(), kind="x")


def test_a_router_keys_values_as_text_and_json() -> None:
    router = Router("route", table={"1": Route("a", True), "true": Route("b", True),
                                    "billing": Route("c", True)},
                    default=None, route_on="x.kind", reads=["x"], find=lambda name: None,
                    child_inputs={})
    assert router.route(1)[1].target == "a"
    assert router.route(True)[1].target == "b"
    assert router.route(" billing\n")[1].target == "c"
    assert router(ctx=object(), x={"kind": "billing"}) == {"value": "billing", "selected": "c"}
