"""Engine workflows measured by ``bench/overhead.py``: no-op steps, so only overhead counts.

Workers import this module through ``ORCH_IMPORTS=bench.workflows``; it binds to the
default orchestrator, so ``ORCH_*`` must be set before it is imported.
"""

from __future__ import annotations

from orchestration import Workflow

QUEUE = "bench.engine"

# -- linear: s1 -> s2 -> s3 -> s4 ----------------------------------------------------------

linear = Workflow("bench_linear", queue=QUEUE)


@linear.task
def s1(x: int) -> int:
    return x


@linear.task
def s2(s1: int) -> int:
    return s1


@linear.task
def s3(s2: int) -> int:
    return s2


@linear.task
def s4(s3: int) -> int:
    return s3


# -- diamond: a -> (b, c) -> d ---------------------------------------------------------------

diamond = Workflow("bench_diamond", queue=QUEUE)


@diamond.task
def a(x: int) -> int:
    return x


@diamond.task
def b(a: int) -> int:
    return a


@diamond.task
def c(a: int) -> int:
    return a


@diamond.task
def d(b: int, c: int) -> int:
    return b + c


WORKFLOWS = {"linear": linear, "diamond": diamond}


def expected(shape: str, x: int) -> int:
    """The final output of a run of ``shape`` with input ``x``."""
    return 2 * x if shape == "diamond" else x


def final_output(shape: str) -> str:
    """The output name holding a run's final value."""
    return "d" if shape == "diamond" else "s4"
