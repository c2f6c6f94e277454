"""Several runs in one message: packing the one-message canvases of ``submit_many``.

A run whose whole canvas is one step message (one step, or consecutive steps on one
queue that fusion runs in one message) costs the broker one publish, one delivery and
one acknowledgement: with many such runs, that per-message cost is most of what the
worker spends on them. ``submit_many`` therefore sends up to ``ORCH_PACK_SIZE`` of them
as one message of the same task: ``kwargs["pack"]`` lists each run's envelope and id,
every other field is what each run's own message would hold. The worker runs each run
of a pack as it runs a message of its own (its own claim, policies, record and
outcome; worker/packs.py), so a run's failure, retry or wait never touches the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Signature
from celery.canvas import _chain, _chord, group

PACK = "pack"
PACKED_KWARGS = frozenset({"run_id", "finalize", "fused", "version"})


def packable(signature: Any) -> bool:
    """True for a run's canvas that is one step message, run to its end by one delivery."""
    if isinstance(signature, _chain | _chord | group) or not isinstance(signature, Signature):
        return False
    kwargs = signature.get("kwargs") or {}
    args = signature.get("args") or ()
    return (len(args) == 1 and set(kwargs) <= PACKED_KWARGS and kwargs.get("finalize") is True
            and not signature.options.get("link") and not signature.options.get("link_error")
            and not signature.options.get("chain"))


def _shape(signature: Signature) -> tuple[Any, ...]:
    """What runs must share to share a message: the task and everything but the run."""
    kwargs = signature.get("kwargs") or {}
    return (signature.task, signature.options.get("queue"),
            signature.options.get("priority"), tuple(kwargs.get("fused") or ()),
            kwargs.get("version"))


def pack(signatures: Iterable[Signature], size: int, celery: Any) -> list[Signature]:
    """The messages to send for these one-message runs: packs of at most ``size`` runs.

    Runs whose messages differ in anything but the run (task, queue, priority, fused
    steps, version) go in different packs. A pack of one is sent as the run's own message.
    """
    groups: dict[tuple[Any, ...], list[Signature]] = {}
    for signature in signatures:
        groups.setdefault(_shape(signature), []).append(signature)
    out: list[Signature] = []
    for members in groups.values():
        for start in range(0, len(members), max(1, size)):
            chunk = members[start:start + max(1, size)]
            if len(chunk) == 1:
                out.append(chunk[0])
                continue
            head = chunk[0]
            kwargs = {key: value for key, value in (head.get("kwargs") or {}).items()
                      if key != "run_id"}
            kwargs[PACK] = [[member["args"][0], member["kwargs"]["run_id"]]
                            for member in chunk]
            out.append(celery.signature(head.task, args=(), kwargs=kwargs,
                                        **dict(head.options)))
    return out


BUNDLE_TASK = "orchestration.bundle"
BUNDLE = "messages"


def bundle(signatures: Iterable[Signature], size: int, celery: Any,
           args: tuple[Any, ...] = ()) -> list[Signature]:
    """Step messages of one run sent together: bundles of at most ``size`` per queue.

    The branches of a fork (compile/canvas.py) are messages of different steps, each
    run as its own by ``orchestration.bundle`` (worker/forks.py): a fan-out of 100
    declared steps is 7 messages, not 100. ``args`` go before each message's own (the
    envelope a fork hands its branches). A bundle of one is sent as the message itself.
    """
    groups: dict[tuple[Any, ...], list[Signature]] = {}
    for signature in signatures:
        key = (signature.options.get("queue"), signature.options.get("priority"))
        groups.setdefault(key, []).append(signature)
    out: list[Signature] = []
    for (queue, priority), members in groups.items():
        for start in range(0, len(members), max(1, size)):
            chunk = members[start:start + max(1, size)]
            if len(chunk) == 1:
                out.append(chunk[0].clone(args=args) if args else chunk[0])
                continue
            options: dict[str, Any] = {"queue": queue, "ignore_result": True}
            if priority is not None:
                options["priority"] = priority
            items = [[member.task, [*args, *(member.args or ())], dict(member.kwargs or {})]
                     for member in chunk]
            out.append(celery.signature(BUNDLE_TASK, args=(), kwargs={BUNDLE: items},
                                        **options))
    return out
