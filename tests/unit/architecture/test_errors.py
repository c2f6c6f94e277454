"""One error tree: every engine exception under OrchestrationError, exported by the package."""

from __future__ import annotations

import orchestration
from orchestration import errors


def _classes() -> list[type[BaseException]]:
    return [value for value in vars(errors).values()
            if isinstance(value, type) and issubclass(value, BaseException)
            and value.__module__ == errors.__name__]


def test_every_exception_is_an_orchestration_error_or_a_signal() -> None:
    stray = [kind.__name__ for kind in _classes()
             if not issubclass(kind, errors.OrchestrationError | errors.StepSignal)]
    assert stray == []


def test_every_engine_error_is_exported_from_the_package() -> None:
    missing = sorted(kind.__name__ for kind in _classes()
                     if issubclass(kind, errors.OrchestrationError)
                     and kind.__name__ not in orchestration.__all__)
    assert missing == []
    for name in ("GateFailed", "BudgetExceeded", "InvalidModelOutput", "RateLimited",
                 "BreakerOpen", "ProviderError", "NotResumable", "NoWaitingInput"):
        assert issubclass(getattr(orchestration, name), orchestration.OrchestrationError)
