"""The browser tests: one ``orchestrate serve`` for the module, driven by a real Chromium.

The served process runs the embedded default (its runs execute on its in-process worker)
with a SQLite results DB of the session; the tests start runs through its webhook and
watch them in Debian's ``chromium`` driven by Playwright (``executable_path``: no browser
is downloaded). Without a browser (or without Playwright) the tests skip with a message
saying how to get one, and fail when ``CI`` is set (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the served process imports tests.browser.workflows by name
    sys.path.insert(0, str(ROOT))

from tests.support.polling import wait_until  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

TOKEN = "browser-token-8c1e"
USER = "operator"
START_TIMEOUT_S = 60.0
IMAGES = ROOT / "docs" / "img"


def _missing(why: str) -> None:
    message = (f"browser tests need {why}: install Debian's chromium (apt-get install -y "
               "chromium) and Playwright (pip install -e '.[dev]'), or set ORCH_CHROMIUM "
               "to a Chromium binary")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def chromium_path() -> str:
    """The Chromium to drive: ``ORCH_CHROMIUM``, else ``chromium`` on the PATH."""
    chosen = os.environ.get("ORCH_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if not chosen or not os.access(chosen, os.X_OK):
        _missing("a Chromium binary (none found)")
    assert chosen is not None
    return chosen


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``orchestrate serve`` on a free loopback port with a token; its base URL."""
    chromium_path()  # no server for tests that will skip
    directory = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    # No provider key: the catalogue's models are answered offline by the local provider.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ORCH_") and not key.endswith("_API_KEY")}
    env.update({"ORCH_BROKER_URL": "memory://",
                "ORCH_DATABASE_URL": f"sqlite:///{directory / 'runs.db'}",
                "ORCH_IMPORTS": "tests.browser.workflows", "ORCH_SERVE_TOKEN": TOKEN,
                "ORCH_LOG_JSON": "true", "PYTHONPATH": str(ROOT)})
    log = directory / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from orchestration.cli import main; main()", "serve",
             "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"orchestrate serve exited {process.returncode}:\n"
                                 f"{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=START_TIMEOUT_S, what="orchestrate serve to answer",
                   interval=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the module."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright's Python package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page of a browser context that logs in with the token (basic auth)."""
    context = browser.new_context(http_credentials={"username": USER, "password": TOKEN},
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    try:
        yield context.new_page()
    finally:
        context.close()
