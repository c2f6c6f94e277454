"""The exception tree.

Every failure the engine raises on purpose derives from :class:`OrchestrationError`.
Control-flow signals used inside the step runtime derive from :class:`StepSignal`
instead, so an ``except OrchestrationError`` in user code never swallows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OrchestrationError(Exception):
    """Root of every error raised by the engine."""


class ConfigurationError(OrchestrationError):
    """Settings or a catalogue file are invalid; raised at start-up, not at first use."""


class WorkflowDefinitionError(OrchestrationError):
    """A workflow or one of its steps is defined wrongly (cycle, unknown name, bad option).

    Raised when the decorator runs or when the workflow is validated, always before
    anything is written or enqueued. The message names the workflow and the culprit.
    """


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a pipeline file: where (a JSON pointer, the line if known), what."""

    pointer: str
    message: str
    line: int | None = None
    file: str | None = None  # set when it is another file than the one loaded

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        where += self.pointer or "/"
        return f"{where}{f' (line {self.line})' if self.line else ''}: {self.message}"


class PipelineError(WorkflowDefinitionError):
    """A pipeline file cannot be loaded; ``problems`` lists every one found (not only the
    first), each with its JSON pointer and, when known, its line. Nothing was registered.
    """

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s):\n{lines}")


class InvalidInput(OrchestrationError):
    """The inputs given to ``submit`` cannot start a run (missing, unknown type, not JSON).

    Nothing has been written or enqueued when this is raised.
    """


class SubmitFailed(OrchestrationError):
    """A run could not be enqueued (broker unreachable or refusing); see the message.

    Usually nothing was created: the run rows were removed in the same call, so a retry
    is safe. ``remaining`` lists the runs that exist anyway (their removal failed, or a
    worker had already started them); the message says what becomes of each.
    """

    def __init__(self, message: str, *, remaining: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.remaining = remaining


class RunNotFound(OrchestrationError):
    """No run with that id exists in the results database."""


class NotResumable(OrchestrationError):
    """The run cannot be resumed: not failed or cancelled, or its workflow is not this one."""


class NoWaitingInput(OrchestrationError):
    """The run has no step waiting for that input."""


class SchemaNotCurrent(ConfigurationError, RuntimeError):
    """The results database's schema is behind the code and this store may not migrate it.

    Run ``orchestrate db upgrade``. (Also a ``RuntimeError``, what was raised before.)
    """


class RetrievalError(OrchestrationError):
    """A retrieval store cannot be built or read: a bad table name, an unreadable cache
    file, a missing SQLite extension. The message names the store and the culprit."""


class ResultsDatabaseUnavailable(OrchestrationError):
    """The results database could not be reached while a step was delivered.

    Nothing is lost: the worker hands the step back to the broker (with a countdown) and
    the next delivery continues once the database answers. ``released`` is the number
    of the delivery that handed the step back after claiming it, so that its next
    delivery is not mistaken for a crash.
    """

    def __init__(self, message: str, *, step: str, released: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.released = released


class WaitTimeout(OrchestrationError, TimeoutError):
    """``RunHandle.wait`` gave up before the run reached a terminal state.

    The run itself goes on; wait again or inspect it with ``orchestrate show``.
    """


class StepError(OrchestrationError):
    """Base for failures of one step attempt that the runtime records on the step."""


class StepTimeout(StepError, TimeoutError):
    """A step attempt ran past its per-attempt timeout."""


class StepAborted(StepError):
    """A step raised a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``, ...): a failed attempt like any other, raised from the original.

    Retries and the fallback apply; the recorded error names the original exception.
    """


class NonRetryableError(StepError):
    """Raise from a step to fail the attempt without any further retry.

    The step's fallback (if any) still applies.
    """


class OutputNotSerializable(NonRetryableError):
    """A step returned a value that cannot be encoded as JSON."""


class BatchOutputMismatch(NonRetryableError):
    """A batched step (``batch_size=``) did not return a list with one output per element.

    Not retried (the same batch gets the same answer): a batch of several elements is
    split in halves, and an element alone follows its step's fallback and ``on_error``.
    """


class InputTimeout(NonRetryableError):
    """A person did not deliver the input a step waited for in time (its fallback applies)."""


class GateFailed(StepError):
    """A step's output failed its quality gate (retried like any failed attempt)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"quality gate failed: {reason}")
        self.reason = reason


class LowConfidence(GateFailed):
    """A step on a model route reported a confidence below the route's ``min_confidence``.

    A gate on confidence: ``on_error`` treats it as ``gate_failed``; the route escalates
    on it when its ``escalate_on`` names ``low_confidence``.
    """

    def __init__(self, confidence: float, minimum: float) -> None:
        super().__init__(f"confidence {confidence:g} is below the route's min_confidence "
                         f"{minimum:g}")
        self.confidence = confidence


class InvalidModelOutput(StepError):
    """A model's answer did not parse or validate as the JSON asked for (retryable)."""


class BudgetExceeded(NonRetryableError):
    """A step's ``max_cost`` or its run's ``budget`` is spent; no further model call."""


class RateLimited(StepError):
    """A call could not be admitted under a shared rate limit before the step's deadline."""


class ErrorKind(StrEnum):
    """What kind of failure an attempt met: the keys of a step's ``on_error`` policies.

    Told apart by :func:`error_kind`. ``timeout``, ``model_unavailable`` and
    ``rate_limited`` are also acted on per model call inside ``ctx.llm``.
    """

    TIMEOUT = "timeout"  # a step attempt or a model call ran out of time
    MODEL_UNAVAILABLE = "model_unavailable"  # 5xx, connection refused/dropped, breaker open
    RATE_LIMITED = "rate_limited"  # HTTP 429, or a shared rate limit did not admit the call
    INVALID_OUTPUT = "invalid_output"  # a model's answer is not the JSON asked for
    GATE_FAILED = "gate_failed"  # the step's output failed its quality gate
    BUDGET_EXCEEDED = "budget_exceeded"  # max_cost or the run's budget is spent
    ERROR = "error"  # anything else (a bug, a 4xx, a non-JSON output...)


class ProviderError(StepError):
    """A provider call failed. ``retryable`` tells transient failures from client errors.

    ``retry_after`` is the wait in seconds the provider asked for (its ``Retry-After``
    header on 429/503), or None when it did not say. ``kind`` is the :class:`ErrorKind`
    (by default from the status: 429 ``rate_limited``; 5xx, or no response and
    retryable, ``model_unavailable``; other statuses ``error``; a transport timeout is
    given ``timeout``). ``policy`` names the step's ``on_error`` entry that ``ctx.llm``
    already applied to this failure (``"model_unavailable: route_to_fallback"``), if any.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 retry_after: float | None = None, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind if kind is not None else _kind_of_status(status, retryable)
        self.policy: str | None = None


def _kind_of_status(status: int | None, retryable: bool) -> ErrorKind:
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if (status is not None and status >= 500) or (status is None and retryable):
        return ErrorKind.MODEL_UNAVAILABLE
    return ErrorKind.ERROR


class BreakerOpen(ProviderError):
    """The model's breaker is open: no call was made (use a fallback model)."""

    def __init__(self, model: str, detail: str) -> None:
        super().__init__(f"{model}: circuit breaker open ({detail})", retryable=False,
                         kind=ErrorKind.MODEL_UNAVAILABLE)
        self.model = model


def error_kind(exc: BaseException) -> ErrorKind:
    """The :class:`ErrorKind` of a failure (what a step's ``on_error`` keys on).

    A ``StepAborted`` is classified by what the step raised; a Python ``TimeoutError``
    counts as a timeout. Only the engine's own errors get another kind than ``error``.
    """
    if isinstance(exc, StepAborted) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ProviderError):
        return exc.kind
    for types, kind in _KINDS:
        if isinstance(exc, types):
            return kind
    return ErrorKind.ERROR


_KINDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], ErrorKind], ...] = (
    (TimeoutError, ErrorKind.TIMEOUT),  # StepTimeout included
    (RateLimited, ErrorKind.RATE_LIMITED),
    (InvalidModelOutput, ErrorKind.INVALID_OUTPUT),
    (GateFailed, ErrorKind.GATE_FAILED),
    (BudgetExceeded, ErrorKind.BUDGET_EXCEEDED),
)


# -- control-flow signals: not failures, never caught by ``except OrchestrationError`` --


class StepSignal(BaseException):
    """Base for control-flow signals inside the runtime; never a failure."""


class HeldElsewhere(StepSignal):
    """A live worker runs this step under another message: this delivery stops here.

    The worker holding the step records it and passes its output on; a second delivery
    (a re-dispatch racing the broker's re-delivery) is dropped instead of running it twice.
    """

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


class WaitForInput(StepSignal):
    """A step parks its run until a person delivers input ``name``."""

    def __init__(self, name: str, timeout: float | None) -> None:
        super().__init__(name, timeout)
        self.name = name
        self.timeout = timeout


class Reschedule(StepSignal):
    """The next attempt waits longer than is worth holding a worker slot for.

    The runtime hands the step back to the broker with a countdown instead of sleeping.
    """

    def __init__(self, delay: float, params: dict[str, object] | None = None) -> None:
        super().__init__(delay)
        self.delay = delay
        self.params = params or {}  # ctx.params for the next attempt (from on_retry)
