"""Workflow.on_event and Workflow.schedule: declared on a workflow, checked when made."""

from __future__ import annotations

import pytest

from orchestration import Workflow, WorkflowDefinitionError
from orchestration.app import Orchestrator


def _support(orchestrator: Orchestrator, name: str = "support") -> Workflow:
    wf = Workflow(name, app=orchestrator, inputs=["text", "priority"])

    @wf.task
    def classify(text: str, priority: int = 0) -> str:
        return text

    return wf


def test_on_event_adds_a_trigger_with_its_mapping(orchestrator: Orchestrator) -> None:
    wf = _support(orchestrator)
    trigger = wf.on_event("zendesk.ticket.created",
                          inputs={"text": "$.ticket.description", "priority": 2},
                          filter={"$.ticket.status": "new"}, dedupe="$.ticket.id")
    assert wf.triggers == (trigger,)
    assert trigger.name == "support_on_zendesk_ticket_created"
    assert (trigger.event, trigger.workflow) == ("zendesk.ticket.created", "support")
    assert trigger.run_inputs({"ticket": {"description": "hi"}}) == {"text": "hi",
                                                                       "priority": 2}
    assert trigger.dedupe is not None and trigger.dedupe.text == "$.ticket.id"
    wf.validate()


def test_schedule_adds_a_schedule(orchestrator: Orchestrator) -> None:
    wf = _support(orchestrator)
    first = wf.schedule("*/5 * * * *", inputs={"text": "digest"})
    second = wf.schedule("0 9 * * 1", inputs={"text": "weekly"}, overlap="queue")
    assert wf.schedules == (first, second)
    assert (first.name, second.name) == ("support_schedule", "support_schedule_2")
    assert (first.overlap, second.overlap) == ("skip", "queue")
    wf.validate()


def test_a_trigger_mapping_an_undeclared_input_is_refused_when_declared(
        orchestrator: Orchestrator) -> None:
    wf = _support(orchestrator)
    with pytest.raises(WorkflowDefinitionError,
                       match=r"trigger 'support_on_e'.*unknown input\(s\) body"):
        wf.on_event("e", inputs={"text": "$.a", "body": "$.b"})
    with pytest.raises(WorkflowDefinitionError, match=r"schedule 'nightly'.*unknown.*body"):
        wf.schedule("0 0 * * *", inputs={"text": "x", "body": "y"}, name="nightly")
    assert wf.triggers == () and wf.schedules == ()


def test_validation_checks_mapped_inputs_against_what_the_steps_take(
        orchestrator: Orchestrator) -> None:
    wf = Workflow("loose", app=orchestrator)  # no declared inputs: the steps say

    @wf.task
    def classify(text: str) -> str:
        return text

    wf.on_event("e", inputs={"text": "$.t", "colour": "$.c"})
    with pytest.raises(WorkflowDefinitionError,
                       match=r"trigger 'loose_on_e': maps colour, which the workflow does "
                             r"not take \(its inputs: text\)"):
        wf.validate()


def test_a_trigger_that_leaves_a_required_input_out_is_refused(
        orchestrator: Orchestrator) -> None:
    wf = _support(orchestrator)
    wf.on_event("e", inputs={"priority": "$.p"})
    with pytest.raises(WorkflowDefinitionError, match=r"no value for required input\(s\) text"):
        wf.validate()


def test_a_schedule_that_leaves_a_required_input_out_is_refused(
        orchestrator: Orchestrator) -> None:
    wf = _support(orchestrator)
    wf.schedule("0 0 * * *")
    with pytest.raises(WorkflowDefinitionError, match=r"schedule 'support_schedule'.*text"):
        wf.validate()


def test_names_are_unique_across_the_deployment(orchestrator: Orchestrator) -> None:
    one, two = _support(orchestrator, "one"), _support(orchestrator, "two")
    one.on_event("e", inputs={"text": "$.t"}, name="new_ticket")
    with pytest.raises(WorkflowDefinitionError,
                       match=r"workflow 'two': trigger name 'new_ticket' is taken by a "
                             r"trigger of workflow 'one'"):
        two.on_event("e", inputs={"text": "$.t"}, name="new_ticket")
    with pytest.raises(WorkflowDefinitionError, match=r"schedule name 'new_ticket' is taken "
                                                      r"by a trigger of workflow 'one'"):
        two.schedule("0 0 * * *", inputs={"text": "x"}, name="new_ticket")
    with pytest.raises(WorkflowDefinitionError, match=r"taken by a trigger of workflow 'one'"):
        one.on_event("e", inputs={"text": "$.t"})
        one.on_event("e", inputs={"text": "$.u"})
    assert [t.name for t in one.triggers] == ["new_ticket", "one_on_e"]


def test_bad_declarations_name_the_workflow(orchestrator: Orchestrator) -> None:
    wf = _support(orchestrator)
    with pytest.raises(WorkflowDefinitionError, match=r"workflow 'support', trigger 'x'.*event"):
        wf.on_event("bad event!", inputs={"text": "$.t"}, name="x")
    with pytest.raises(WorkflowDefinitionError, match=r"schedule 'x'.*cron"):
        wf.schedule("every day", inputs={"text": "t"}, name="x")
    with pytest.raises(WorkflowDefinitionError, match=r"overlap"):
        wf.schedule("0 0 * * *", inputs={"text": "t"}, overlap="later")
