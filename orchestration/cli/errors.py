"""How ``orchestrate`` reports a failure: one line naming the problem, ``--debug`` for more.

A bad ``ORCH_DATABASE_URL``, an unreachable database or broker, or a bad model catalogue
is an operator's problem, not a bug: a 45-frame traceback hides the one line that says
what to fix. :class:`OperatorGroup` turns any error escaping a command into that line
(exit code 2); ``orchestrate --debug ...`` lets it propagate with its traceback.
"""

from __future__ import annotations

import re
from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from orchestration.errors import OrchestrationError

EXIT_CODE = 2
_HINT = " (orchestrate --debug ... shows the traceback)"
_SPACE = re.compile(r"\s+")
_URL_KEY = "orchestration.database_url"  # in click's ctx.meta, shared by the command chain


class CommandFailed(click.ClickException):
    """A command failed for a reason outside its own checks; exits with code 2."""

    exit_code = EXIT_CODE

    def __init__(self, exc: BaseException) -> None:
        super().__init__(describe(exc) + _HINT)


class SetupFailed(CommandFailed):
    """The orchestrator could not be built: settings, catalogue or workflow modules."""


def debugging() -> bool:
    """True when ``orchestrate --debug`` was given (tracebacks wanted)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


class OperatorGroup(click.Group):
    """A click group whose commands' unexpected errors print as one line (see module)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; turn an error escaping it into :class:`CommandFailed`."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise CommandFailed(exc) from exc


def describe(exc: BaseException) -> str:
    """One line naming what is wrong, without secrets (database passwords are masked)."""
    if isinstance(exc, ArgumentError):
        return (f"bad results database URL {_database_url()} (ORCH_DATABASE_URL): "
                f"{_line(str(exc))}")
    if isinstance(exc, DBAPIError):
        return (f"cannot use the results database {_database_url()} (ORCH_DATABASE_URL): "
                f"{_line(str(exc.orig))}")
    if isinstance(exc, SQLAlchemyError):
        return f"results database error ({_database_url()}): {_line(str(exc))}"
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"ORCH_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        return f"invalid settings: {problems}"
    if isinstance(exc, OrchestrationError):
        return _line(str(exc))
    if isinstance(exc, ImportError):
        return f"cannot import a workflow module (ORCH_IMPORTS): {_line(str(exc))}"
    if isinstance(exc, BrokerError | ConnectionError):
        return f"cannot reach the broker or Redis: {_line(str(exc))}"
    if isinstance(exc, OSError):
        return f"{_line(str(exc))} (results database {_database_url()})"
    return f"{type(exc).__name__}: {_line(str(exc))}"


def _line(text: str) -> str:
    """``text`` on one line, without SQLAlchemy's 'Background on this error' link."""
    text = text.split("(Background on this error at:")[0]
    return _SPACE.sub(" ", text).strip() or "(no message)"


def remember_database_url(url: str) -> None:
    """Note the command's results database URL, for error messages."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_URL_KEY] = url


def _database_url() -> str:
    """``ORCH_DATABASE_URL`` with its password masked (or a placeholder if unknown)."""
    ctx = click.get_current_context(silent=True)
    url = ctx.meta.get(_URL_KEY) if ctx is not None else None
    if url is None:
        return "(unknown)"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable)"
