"""Cost-aware model routes at run time: which tier an attempt calls, and when to climb.

A step with ``model="<route>"`` (a route of the catalogue, see
:class:`~orchestration.llm.catalogue.RouteConfig`) starts each delivery on the route's
first, cheapest tier: ``ctx.model`` is that tier, so ``ctx.llm`` calls it. An attempt that
fails for a reason the route's ``escalate_on`` names runs again at once on the next tier:

- ``gate_failed``: the step's gate refused the output;
- ``invalid_output``: :class:`~orchestration.errors.InvalidModelOutput` (``complete_json``
  got no valid JSON);
- ``low_confidence``: the attempt reported a confidence below ``min_confidence``, with
  ``ctx.confidence(x)`` or as a numeric ``confidence`` key of a returned dict (an attempt
  that reports none is not low).

Climbing a tier is an attempt of its own in the trace (its model, cost, and the policy
``escalated on <reason>: route <r> <tier> -> <next>``) and does not use one of the step's
``retries``: a route of N tiers gives up to N attempts plus ``retries``. Any other failure,
and an escalation reason on the last tier, is an ordinary failed attempt: retries run on
the tier reached (also a retry handed back to the broker: the tier rides in its params),
then ``on_error``/the fallback apply as for any step. A new delivery of the step (a
crashed worker's, a resumed run's) starts again from the cheapest tier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestration.errors import GateFailed, InvalidModelOutput, LowConfidence
from orchestration.llm.catalogue import RouteConfig

#: Where the tier reached rides in a retry's params through the broker (never in ctx.params).
TIER_PARAM = "orchestration.route_tier"

if TYPE_CHECKING:
    from orchestration.execute.context import StepContext
    from orchestration.llm.resilience import Resilience


class Tiers:
    """The tiers of one step call's route as its attempts climb them (or a plain model)."""

    def __init__(self, name: str | None, route: RouteConfig | None, index: int = 0) -> None:
        self.name = name
        self.route = route
        top = len(route.tiers) - 1 if route is not None else 0
        self.index = max(0, min(index, top)) if isinstance(index, int) else 0

    @classmethod
    def of(cls, model: str | None, services: Resilience | None, index: int = 0) -> Tiers:
        """The step's ``model=`` as a route when the catalogue names it so, at tier ``index``."""
        route = services.catalogue.route(model) if services is not None else None
        return cls(model, route, index)

    def carried(self, params: dict[str, Any]) -> dict[str, Any]:
        """A retry's params for the broker, with the tier reached (to go on from it)."""
        if self.route is None or self.index == 0:
            return params
        return {**params, TIER_PARAM: self.index}

    @property
    def model(self) -> str | None:
        """The model the next attempt calls (``ctx.model``)."""
        return self.route.tiers[self.index] if self.route is not None else self.name

    def check_confidence(self, ctx: StepContext, value: Any) -> None:
        """Raise LowConfidence when the attempt reported less than ``min_confidence``."""
        route = self.route
        if route is None or route.min_confidence is None \
                or "low_confidence" not in route.escalate_on:
            return
        confidence = ctx.reported_confidence
        if confidence is None and isinstance(value, dict):
            given = value.get("confidence")
            if isinstance(given, int | float) and not isinstance(given, bool):
                confidence = float(given)
        if confidence is not None and confidence < route.min_confidence:
            raise LowConfidence(confidence, route.min_confidence)

    def escalate(self, exc: BaseException) -> str | None:
        """Move to the next tier if ``exc`` is a reason to and one is left; what was done."""
        route = self.route
        if route is None or self.index + 1 >= len(route.tiers):
            return None
        reason = _reason(exc)
        if reason is None or reason not in route.escalate_on:
            return None
        self.index += 1
        return (f"escalated on {reason}: route {self.name} "
                f"{route.tiers[self.index - 1]} -> {route.tiers[self.index]}")


def _reason(exc: BaseException) -> str | None:
    if isinstance(exc, LowConfidence):
        return "low_confidence"
    if isinstance(exc, GateFailed):
        return "gate_failed"
    if isinstance(exc, InvalidModelOutput):
        return "invalid_output"
    return None
