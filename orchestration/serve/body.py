"""Reading a request body under a size limit, enforced while it arrives.

A declared ``Content-Length`` over the limit is refused before a byte is read; a body
sent without one (chunked) is refused as soon as the bytes received pass the limit, so a
sender can never make the server buffer more than the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body; a 413 ``HTTPException`` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPException(400, f"Content-Length {declared[:40]!r} is not a number"
                                ) from None
        if length > limit:
            raise too_large(limit, f"declares {length} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit, "is larger")
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int, how: str) -> HTTPException:
    """The 413 of a body over the limit."""
    return HTTPException(413, f"the body {how}; the limit is {limit} bytes "
                              "(ORCH_WEBHOOK_MAX_BYTES)")
