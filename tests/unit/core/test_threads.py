"""Kept threads for fan-out inside a delivery (orchestration.core.threads)."""

from __future__ import annotations

import contextvars
import os
import threading
import time

import pytest

from orchestration.core.threads import kept_pool, run_bounded

_BINDING: contextvars.ContextVar[str] = contextvars.ContextVar("binding", default="unset")


def test_results_come_back_in_order_and_at_most_width_run_at_once() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow_square(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        return n * n

    assert run_bounded(slow_square, list(range(40)), 6, pool="test-width") == \
        [n * n for n in range(40)]
    assert 1 < peak <= 6


def test_the_threads_outlive_one_call_and_their_thread_locals_with_them() -> None:
    local = threading.local()

    def connection(_: int) -> int:
        if not hasattr(local, "connection"):  # what a provider keeps per thread
            local.connection = object()
        time.sleep(0.002)
        return id(local.connection)

    first = set(run_bounded(connection, list(range(20)), 4, pool="test-kept"))
    second = set(run_bounded(connection, list(range(20)), 4, pool="test-kept"))
    # With a pool per call, every call would open new connections.
    assert first & second
    assert kept_pool("test-kept") is kept_pool("test-kept")
    assert kept_pool("test-kept").threads <= 8  # 4 at a time; an idle one is reused


def test_kept_threads_are_daemons_so_a_stuck_call_never_holds_up_exit() -> None:
    release = threading.Event()
    future = kept_pool("test-daemon").submit(release.wait)  # stuck until released
    try:
        stuck = [t for t in threading.enumerate() if t.name.startswith("test-daemon_")]
        assert stuck and all(t.daemon for t in stuck)
    finally:
        release.set()
    assert future.result(timeout=5) is True


def test_a_cancelled_submission_never_runs() -> None:
    pool = kept_pool("test-cancel", size=1)
    release = threading.Event()
    ran: list[str] = []
    busy = pool.submit(release.wait)
    queued = pool.submit(lambda: ran.append("queued"))
    assert queued.cancel()  # the only thread is busy: still pending
    release.set()
    busy.result(timeout=5)
    pool.submit(lambda: None).result(timeout=5)  # the thread went on past it
    assert ran == [] and pool.threads == 1


def test_no_element_sees_a_context_variable_another_one_set() -> None:
    def binds(n: int) -> str:
        seen = _BINDING.get()
        _BINDING.set(f"element {n}")  # never unbound, as a careless log binding
        return seen

    _BINDING.set("caller")
    try:
        assert set(run_bounded(binds, list(range(30)), 3, pool="test-context")) == {"unset"}
        assert set(run_bounded(binds, list(range(30)), 3, pool="test-context",
                               inherit=True)) == {"caller"}
        assert _BINDING.get() == "caller"
    finally:
        _BINDING.set("unset")


def test_every_item_runs_and_the_first_failure_in_order_is_raised() -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def fails_on_odd(n: int) -> int:
        with lock:
            ran.append(n)
        if n % 2:
            raise ValueError(f"item {n}")
        return n

    with pytest.raises(ValueError, match=r"item 1$"):
        run_bounded(fails_on_odd, list(range(10)), 3, pool="test-errors")
    assert sorted(ran) == list(range(10))


def test_here_the_caller_is_a_runner_so_a_saturated_pool_cannot_stall_it() -> None:
    pool = kept_pool("test-here", size=1)
    release = threading.Event()
    blocker = pool.submit(release.wait)  # the pool's only thread is busy
    try:
        caller = threading.get_ident()
        ran_on = run_bounded(lambda n: threading.get_ident(), list(range(5)), 2,
                             pool="test-here", here=True)
        assert set(ran_on) == {caller}  # the helper never got a thread: the caller ran all
    finally:
        release.set()
    assert blocker.result(timeout=5) is True


def test_edge_cases() -> None:
    assert run_bounded(lambda n: n, [], 4) == []
    with pytest.raises(ValueError, match="width"):
        run_bounded(lambda n: n, [1], 0)


def test_a_forked_child_starts_its_own_pool() -> None:
    parent = kept_pool("test-fork")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a pool of its own, that works
        try:
            ok = kept_pool("test-fork") is not parent and \
                run_bounded(lambda n: n + 1, [1, 2], 2, pool="test-fork") == [2, 3]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
