"""The envelope: inline vs by-reference values, and merging the envelopes of a chord."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration.core.envelope import INPUT_SOURCE, Envelope, dumps

RUN = "run-1"


def msg(**fields: Any) -> dict[str, Any]:
    return {"run": RUN, "out": {}, **fields}


def test_dumps_is_canonical() -> None:
    assert dumps({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    with pytest.raises(TypeError):
        dumps({1, 2})


def test_small_values_inline_large_by_reference() -> None:
    envelope = Envelope(RUN)
    envelope.put("short", "abc", source="step_a", limit=10)
    envelope.put("long", "x" * 20, source="step_b", limit=10)
    envelope.put("exact", "12345678", source="step_c", limit=10)  # '"12345678"' is 10 bytes
    envelope.put("unicode", "éééé", source="step_d", limit=9)  # 10 bytes of UTF-8
    assert envelope.inline == {"short": "abc", "exact": "12345678"}
    assert envelope.refs == {"long": "step_b", "unicode": "step_d"}
    assert envelope.has("long") and envelope.has("short") and not envelope.has("missing")


@pytest.mark.parametrize("value", [None, True, 0, 10**30, 1.5])
def test_scalars_are_always_inline(value: Any) -> None:
    envelope = Envelope(RUN)
    envelope.put("v", value, source="s", limit=0)
    assert envelope.inline == {"v": value} and envelope.refs == {}


def test_inputs_by_reference_name_the_input_source() -> None:
    envelope = Envelope.for_inputs(RUN, {"text": "t" * 100, "n": 3}, limit=16)
    assert envelope.inline == {"n": 3}
    assert envelope.refs == {"text": INPUT_SOURCE}


def test_message_round_trip_omits_empty_parts() -> None:
    assert Envelope(RUN).to_message() == {"run": RUN, "out": {}}
    envelope = Envelope(RUN, {"a": 1}, {"b": "b"}, {"c", "a2"}, {"c"})
    message = envelope.to_message()
    assert message == {"run": RUN, "out": {"a": 1}, "ref": {"b": "b"},
                       "blocked": ["a2", "c"], "failed": ["c"]}
    back = Envelope.from_message(message)
    assert (back.inline, back.refs, back.blocked, back.failed) == (
        {"a": 1}, {"b": "b"}, {"a2", "c"}, {"c"})


def test_chord_list_is_merged() -> None:
    merged = Envelope.from_message([
        msg(out={"x": 1, "a": "A"}),
        msg(out={"x": 1, "b": "B"}, ref={"big": "producer"}),
    ])
    assert merged.run_id == RUN
    assert merged.inline == {"x": 1, "a": "A", "b": "B"}
    assert merged.refs == {"big": "producer"}


def test_nested_lists_are_flattened() -> None:
    merged = Envelope.from_message([
        [msg(out={"a": 1}), [msg(out={"b": 2})]],
        (msg(out={"c": 3}),),
    ])
    assert merged.inline == {"a": 1, "b": 2, "c": 3}


def test_blocked_and_failed_are_unions() -> None:
    merged = Envelope.from_message([
        msg(blocked=["a"], failed=["a"]),
        msg(out={"b": 2}),
        msg(blocked=["c", "d"], failed=["c"]),
    ])
    assert merged.blocked == {"a", "c", "d"} and merged.failed == {"a", "c"}
    assert merged.inline == {"b": 2}


def test_merging_does_not_mutate_the_received_parts() -> None:
    first = msg(out={"a": 1}, blocked=["z"])
    Envelope.from_message([first, msg(out={"b": 2}, blocked=["y"])])
    assert first == msg(out={"a": 1}, blocked=["z"])


def test_mismatched_run_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="envelopes of two runs merged: run-1, run-2"):
        Envelope.from_message([msg(), {"run": "run-2", "out": {}}])


@pytest.mark.parametrize(("message", "error"), [
    ([], "a step received no envelope"),
    ([[], ()], "a step received no envelope"),
    ("not an envelope", "not an envelope: str"),
    ([msg(), 42], "not an envelope: int"),
])
def test_malformed_messages_are_rejected(message: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Envelope.from_message(message)


def test_started_flag_survives_merges_and_round_trips() -> None:
    assert Envelope.from_message(msg()).started is False
    merged = Envelope.from_message([msg(), [msg(started=True)]])
    assert merged.started is True
    assert merged.to_message().get("started") is True
