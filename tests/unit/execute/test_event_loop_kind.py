"""Which event loop async steps run on (ORCH_EVENT_LOOP)."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from pydantic import ValidationError

from orchestration.core.settings import Settings
from orchestration.errors import ConfigurationError
from orchestration.execute.event_loop import WorkerLoop, new_loop


def test_uvloop_by_default_and_asyncio_on_request() -> None:
    assert Settings(imports=[]).event_loop == "uvloop"
    fast, plain = new_loop("uvloop"), new_loop("asyncio")
    try:
        assert type(fast).__module__.startswith("uvloop")
        assert type(plain).__module__.startswith("asyncio")
    finally:
        fast.close()
        plain.close()


def test_without_uvloop_the_loop_is_asyncios(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    loop = new_loop("uvloop")
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_an_unknown_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="'trio'"):
        new_loop("trio")
    monkeypatch.setenv("ORCH_EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        Settings(imports=[])


def test_a_stopped_loop_cancels_what_it_ran_and_closes() -> None:
    worker = WorkerLoop(2, "uvloop")
    running = threading.Event()
    seen: list[str] = []

    async def forever() -> None:
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    worker.submit(forever)
    assert running.wait(10)
    worker.stop()
    assert not worker.thread.is_alive()
    assert worker.loop.is_closed()
    assert seen == ["cancelled"]
