"""Fitting a conversation to a token budget: never over it, newest turns first."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.execute.memory import SUMMARY_PREFIX, fit
from orchestration.llm.tokens import TokenCounter
from orchestration.store.memory import Summary, Turn

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                max_size=3000)
roles = st.sampled_from(["user", "assistant", "tool", "system"])


@settings(max_examples=120, deadline=None)
@given(contents=st.lists(st.tuples(roles, texts), max_size=200),
       summary=st.none() | texts, budget=st.integers(0, 4000),
       estimate=st.sampled_from(["chars/4", "words*1.3"]), ratio=st.floats(0.5, 2.0))
def test_the_context_never_exceeds_its_budget(contents: list[tuple[str, str]],
                                              summary: str | None, budget: int, estimate: str,
                                              ratio: float) -> None:
    counter = TokenCounter(estimate)
    counter.ratio = ratio
    turns = [Turn(i + 1, role, text, 0) for i, (role, text) in enumerate(contents)]
    context = fit(Summary(1, summary, 0) if summary else None, turns, budget, counter)
    assert context.tokens == counter.count_messages(context.messages()) <= budget
    kept = [(t["role"], t["content"]) for t in context.turns]
    whole = [(t.role, t.content) for t in turns]
    if kept:  # the newest turns, in order (the oldest of them perhaps cut from its start)
        assert kept[1:] == whole[len(whole) - len(kept) + 1:]
        assert whole[-len(kept)][1].endswith(kept[0][1].removeprefix("…"))
    if context.summary is not None:
        assert summary is not None and summary.endswith(context.summary.removeprefix("…"))


def test_two_hundred_turns_fit_and_the_newest_stay_whole() -> None:
    counter = TokenCounter()
    turns = [Turn(i, "user" if i % 2 else "assistant", f"turn {i} " + "x" * (i * 7), 0)
             for i in range(1, 201)]
    context = fit(Summary(0, "s" * 20_000, 0), turns, 1500, counter)
    assert context.tokens <= 1500 and context.truncated
    assert context.turns[-1]["content"] == turns[-1].content
    assert context.messages()[0]["content"].startswith(SUMMARY_PREFIX)
