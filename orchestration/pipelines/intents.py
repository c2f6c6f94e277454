"""A pipeline's intent step: a semantic router declared in the file.

```yaml
route_intent:
  intents:
    text: message                 # the input or step output classified
    examples: intents.yaml        # label -> utterances, inline or a file beside the pipeline
    threshold: 0.5
    default: general
    method: classifier            # or similarity (the default)
route_ticket:
  route_on: route_intent.route    # an ordinary routing step routes on the decision
  routing: {billing: billing_agent, technical: tech_support, general: answer}
```

The step's output is the decision of ``wf.router`` (``{"route", "confidence", ...}``);
the checks are the router's own (``define/intents.py``), reported at the file's pointer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestration.define.intents import RouterStep, build_router
from orchestration.errors import WorkflowDefinitionError

#: Which key of the step's ``intents`` a router's error is about (its words -> the key).
_POINTERS = (("default=", "default"), ("threshold must", "threshold"),
             ("method must", "method"), ("text=", "text"), ("example", "examples"),
             ("label", "examples"))


def intent_router(step: str, raw: Mapping[str, Any], at: str, base: Path,
                  problem: Callable[[str, str], None]) -> RouterStep | None:
    """The step's callable, or None after noting each problem at its pointer."""
    options = dict(raw)
    examples = options.get("examples")
    if isinstance(examples, str):  # a file beside the pipeline (or an absolute path)
        options["examples"] = base / examples
    try:
        spec = build_router(step, options, type(None), f"intents step {step!r}",
                            lambda _: ((), ()))
    except WorkflowDefinitionError as exc:
        message = str(exc).removeprefix(f"intents step {step!r}: ")
        key = next((key for word, key in _POINTERS if word in message), None)
        problem(f"{at}/{key}" if key is not None and key in raw else at, message)
        return None
    return RouterStep(spec, [spec.text], set())
