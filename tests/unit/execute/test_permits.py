"""Permits in memory (the embedded default): limit, re-take, lease expiry, renewal."""

from __future__ import annotations

import time

from orchestration.execute.permits import LocalPermits, Renewer, scope
from tests.support.polling import wait_until


def test_a_limit_admits_that_many_holders_and_a_holder_retakes_its_own() -> None:
    permits = LocalPermits(lease=30)
    assert permits.take("s", "a", 2) and permits.take("s", "b", 2)
    assert not permits.take("s", "c", 2)
    assert permits.take("s", "a", 2)  # re-taken (renewed), not a third permit
    assert permits.free("s", 2) == 0
    permits.release("s", "a")
    assert permits.free("s", 2) == 1 and permits.take("s", "c", 2)
    assert permits.holders("s") == ["b", "c"]
    assert permits.take("other", "z", 1)  # scopes are independent


def test_a_lapsed_lease_frees_its_permit() -> None:
    permits = LocalPermits(lease=0.05)
    assert permits.take("s", "dead", 1)
    assert not permits.take("s", "next", 1)
    wait_until(lambda: permits.take("s", "next", 1), timeout=5, what="the lease to lapse")
    assert not permits.renew("s", "dead")


def test_the_renewer_keeps_a_running_holders_lease() -> None:
    permits = LocalPermits(lease=0.15)
    renewer = Renewer(permits)
    assert permits.take("s", "alive", 1)
    with renewer.holding(("s", "alive")):
        time.sleep(0.5)  # three leases long: only renewals keep it
        assert permits.holders("s") == ["alive"]
        assert not permits.take("s", "other", 1)
    wait_until(lambda: permits.take("s", "other", 1), timeout=5,
               what="the lease to lapse once no longer renewed")


def test_scopes_name_the_workflow_step_and_key() -> None:
    assert scope("wf", "resumes") == "wf:resumes"
    assert scope("step", "resumes.score", "acme", keyed=True) == "step:resumes.score:acme"
    assert scope("wf", "w", 42, keyed=True) == "wf:w:42"
    long = scope("wf", "w", "x" * 500, keyed=True)
    assert long.startswith("wf:w:sha1-") and len(long) < 60
