"""``await ctx.llm.acomplete(...)``: model calls from an ``async def`` step.

Each call is the resilient synchronous one (:meth:`LLMClient.complete`: breakers,
retries, fallback models, budgets, rate limits, cost recorded on the step) run in the
executor of the worker's event loop (``ORCH_ASYNC_THREADS`` threads per worker process,
64 unless set), so the loop keeps running every other async step while it waits. At most
that many calls of one worker process are in flight at once; the others queue for a
thread. Calling the synchronous ``ctx.llm.complete`` inside an ``async def`` step works
but blocks the loop (and every async step of the process) for the whole call.
"""

from __future__ import annotations

import asyncio
import contextvars
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from orchestration.llm.providers.base import Completion, Messages


class AsyncCalls:
    """The awaitable siblings of ``complete`` and ``complete_json`` (mixed into LLMClient)."""

    def complete(self, prompt: str | Messages, **kwargs: Any) -> Completion:
        raise NotImplementedError

    def complete_json(self, prompt: str | Messages, *,
                      schema: type[BaseModel] | dict[str, Any], **kwargs: Any) -> Any:
        raise NotImplementedError

    async def acomplete(self, prompt: str | Messages, **kwargs: Any) -> Completion:
        """``complete(prompt, **kwargs)`` without blocking the event loop (same options)."""
        completion: Completion = await _in_executor(partial(self.complete, prompt, **kwargs))
        return completion

    async def acomplete_json(self, prompt: str | Messages, *,
                             schema: type[BaseModel] | dict[str, Any], **kwargs: Any) -> Any:
        """``complete_json(prompt, schema=..., **kwargs)`` without blocking the event loop."""
        return await _in_executor(partial(self.complete_json, prompt, schema=schema, **kwargs))


async def _in_executor(call: partial[Any]) -> Any:
    # The caller's context (structlog's bound fields, the attempt's trace) goes along.
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(None, context.run, call)
