"""Model routes in the catalogue: checked on load, with errors that name the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import MODELS_FILE as DEFAULT_CATALOGUE
from orchestration import ConfigurationError
from orchestration.llm.catalogue import load_catalogue

HEAD = """
providers:
  house: {kind: local}
models:
  cheap: {provider: house, input_cost_per_1k: 0.1, output_cost_per_1k: 0.2}
  dear: {provider: house, input_cost_per_1k: 1.0, output_cost_per_1k: 2.0}
routes:
"""


def load(tmp_path: Path, routes: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(HEAD + routes)
    load_catalogue(path)


def test_the_shipped_catalogue_has_the_support_route() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    route = catalogue.route("support-tiered")
    assert route is not None
    assert route.tiers == ["local-small", "gpt-4o-mini", "gpt-4o"]
    assert route.min_confidence == 0.7
    assert catalogue.route("gpt-4o") is None


def test_a_valid_route_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(HEAD + "  r: {tiers: [cheap, dear], min_confidence: 0.5}\n")
    route = load_catalogue(path).route("r")
    assert route is not None
    assert route.escalate_on == ["gate_failed", "invalid_output", "low_confidence"]


@pytest.mark.parametrize(("routes", "message"), [
    ("  r: {tiers: [cheap, nope], escalate_on: [gate_failed]}",
     "route 'r': tier 'nope' is not a model (known: cheap, dear)"),
    ("  r: {tiers: [dear, cheap], escalate_on: [gate_failed]}",
     "route 'r': tier 'cheap' ($0.3 per 1k in+out) is cheaper than 'dear' before it ($3); "
     "tiers go cheapest first"),
    ("  cheap: {tiers: [cheap, dear], escalate_on: [gate_failed]}",
     "route 'cheap' has the name of a model"),
    ("  r: {tiers: [cheap, dear]}",
     "escalate_on names low_confidence but min_confidence is not set"),
    ("  r: {tiers: [cheap, dear], min_confidence: 1.5}",
     "min_confidence\n  Input should be less than or equal to 1"),
    ("  r: {tiers: [], escalate_on: [gate_failed]}", "routes.r.tiers"),
    ("  r: {tiers: [cheap, cheap], escalate_on: [gate_failed]}",
     "tiers name a model twice"),
    ("  r: {tiers: [cheap], escalate_on: [timeout]}",
     "Input should be 'gate_failed', 'invalid_output' or 'low_confidence'"),
    ("  r: {tiers: [cheap], escalate_on: [gate_failed], retries: 2}",
     "routes.r.retries\n  Extra inputs are not permitted"),
    ("  r: {tiers: [cheap], escalate_on: [gate_failed]}\n"
     "  s: {tiers: [r], escalate_on: [gate_failed]}",
     "route 's': tier 'r' is a route; tiers are models"),
    ("  'a b': {tiers: [cheap], escalate_on: [gate_failed]}",
     "route 'a b': not a usable queue name (model.a b)"),
])
def test_a_bad_route_is_refused_naming_it(tmp_path: Path, routes: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid model catalogue") as raised:
        load(tmp_path, routes + "\n")
    assert message in str(raised.value)


def test_calling_a_route_as_a_model_says_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(HEAD + "  r: {tiers: [cheap, dear], escalate_on: [gate_failed]}\n")
    with pytest.raises(ConfigurationError, match=r"'r' is a route, not a model: name it as "
                                                 r"a step's model="):
        load_catalogue(path).model("r")
