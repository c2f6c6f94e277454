"""Workflows of ``test_exact_delivery.py``: a step receives exactly what was submitted.

Secrets (deny-listed field names, secret-looking strings) are stored redacted. These
workflows carry them in large values (past the inline limit, where values travel by
reference), nested in inputs, inside strings, and in step outputs, and their steps answer
a digest of what they received, so the test compares it with the digest of what it sent
(the stored copies are redacted; digests are not).

Imported by the test process and by the workers the test module starts (their
``ORCH_IMPORTS`` add this module). ``EXACT_QUEUE`` is served by the module's worker;
``LOST_QUEUE`` by none until a test starts one, so a test can drop a run's message there
as a broker restarted empty would.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from orchestration import NonRetryableError, StepContext, Workflow
from orchestration.core.envelope import dumps
from tests.integration.support.workflows.common import _redis, count_call

EXACT_QUEUE = "it.exact"
LOST_QUEUE = "it.exact.lost"


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON: what a step saw, without storing it."""
    return hashlib.sha256(dumps(value).encode()).hexdigest()


def fail_flag_key(ticket: str) -> str:
    """While this Redis key exists, the failing steps of runs with this ticket fail."""
    return f"it:exact:fail:{ticket}"


def _fail_if_flagged(ticket: str) -> None:
    if _redis().exists(fail_flag_key(ticket)):
        raise NonRetryableError(f"downstream service down for {ticket}")


# -- large values: an input and an output past the inline limit, with secrets in them --------

large = Workflow("it_exact_large", queue=EXACT_QUEUE)


@large.task
def quote(document: str, profile: dict[str, Any]) -> dict[str, Any]:
    """What it received (digest), and the document again: a large output with a secret."""
    return {"seen": digest([document, profile]), "copy": document}


@large.task
def check(quote: dict[str, Any]) -> str:
    return digest(quote["copy"])


# -- resume: nested and partly-redacted secret inputs ------------------------------------------

resumable = Workflow("it_exact_resume", queue=EXACT_QUEUE)


@resumable.task
def prepare(ticket: str) -> str:
    return f"ticket-{ticket}"


@resumable.task
def sign_in(prepare: str, ticket: str, creds: dict[str, Any], note: str,
            ctx: StepContext) -> str:
    """Fails while the ticket's flag is set; answers the digest of what it received."""
    count_call(ctx)
    _fail_if_flagged(ticket)
    return digest([creds, note])


# -- resume: a finished step's output was stored redacted and the failed step reads it -------

handover = Workflow("it_exact_handover", queue=EXACT_QUEUE)


@handover.task
def issue(ticket: str) -> dict[str, str]:
    return {"user": ticket, "access_token": f"tok-{ticket}-0123456789"}


@handover.task
def redeem(issue: dict[str, str], ticket: str, ctx: StepContext) -> str:
    count_call(ctx)
    _fail_if_flagged(ticket)
    return digest(issue)


# -- the reconciler: runs whose message was lost --------------------------------------------

stranded = Workflow("it_exact_stranded", queue=LOST_QUEUE)


@stranded.task
def use_creds(ticket: str, creds: dict[str, Any], note: str, ctx: StepContext) -> str:
    count_call(ctx)
    return digest([creds, note])


half_done = Workflow("it_exact_half", queue=EXACT_QUEUE)


@half_done.task
def grant(ticket: str) -> dict[str, str]:
    return {"user": ticket, "token": f"tok-{ticket}-0123456789"}


@half_done.task(queue=LOST_QUEUE)
def spend(grant: dict[str, str], ctx: StepContext) -> str:
    count_call(ctx)
    return digest(grant)


# -- a redact= hook: what it changes leaves no marker in the stored copy ---------------------

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def mask_emails(value: Any) -> Any:
    """The README's kind of hook: e-mail addresses never reach the results DB."""
    if isinstance(value, dict):
        return {key: mask_emails(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_emails(item) for item in value]
    return EMAIL.sub("<email>", value) if isinstance(value, str) else value


hooked = Workflow("it_exact_hooked", queue=EXACT_QUEUE, redact=mask_emails)


@hooked.task
def reply(ticket: str, text: str, ctx: StepContext) -> str:
    count_call(ctx)
    _fail_if_flagged(ticket)
    return digest(text)


# -- a map over a list with secrets in it, and a step after the map that reads the list ------

mapped = Workflow("it_exact_map", queue=EXACT_QUEUE)


@mapped.task(map="accounts")
def probe(accounts: dict[str, str]) -> str:
    """One element: the digest of what it received."""
    return digest(accounts)


@mapped.task
def audit(probe: list[str], accounts: list[dict[str, str]]) -> str:
    return digest(accounts)
