"""Request-body cap enforced while the body streams, chunked uploads included, and the
uvicorn options that cap the request head (:func:`server_options`).

A declared ``Content-Length`` over the cap is refused before a byte is read. Otherwise the
middleware counts the bytes of each ``http.request`` message; once the count passes the cap
it stops reading and answers 413, whatever the application was about to say (the app sees
the cut-off body as an error, and that answer is replaced).
"""

from __future__ import annotations

import contextlib
from typing import Any

from serving import problems
from serving.settings import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """Options for ``uvicorn.run``/``uvicorn.Config``: the request head bounded, and idle
    connections kept longer than the client's or ingress's pool keeps them.

    uvicorn's httptools protocol buffers a header of any size: one 64 MiB header costs the
    process ~250 MB. The gateway runs httptools (C, cheaper per request than h11's pure Python:
    docs/benchmarks.md, issue #14) behind a byte count of the head that answers 400 and closes
    the connection past ``max_header_bytes`` before the parser sees those bytes
    (serving/http_protocol.py). uvicorn closes a connection idle for 5 s by default; a client
    (or a load balancer, typically 60 s) sending on it just then gets a reset instead of an
    answer, so the server must be the one that waits longer.
    """
    from serving.http_protocol import bounded_httptools

    return {
        "http": bounded_httptools(settings.max_header_bytes),
        "timeout_keep_alive": 75,
    }


class BodyTooLarge(Exception):
    """Raised from ``receive`` once the body passes the cap."""


class BodySizeLimit:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, scope: dict[str, Any], send: Any) -> None:
        detail = (
            f"the request body is larger than {self.max_bytes} bytes: send a smaller image "
            "(the limit is SKIN_MAX_UPLOAD_BYTES plus 64 KiB for the form)"
        )
        problem = problems.body("body-too-large", 413, detail, scope["path"])
        await problems.send(send, 413, problem, [(b"connection", b"close")])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(scope, send)
                    return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if exceeded:  # the app's answer to a cut-off body: ours replaces it
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not started:
            await self._reject(scope, send)
