"""The outermost middleware: the request id (serving/request_context.py), the access line,
and the problem answer for a crash, which carries the id like every other answer."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from serving import problems
from serving.request_context import HEADER, accepted_id, enter, leave

access_log = logging.getLogger("serving.access")
log = logging.getLogger("serving")


class RequestContext:
    """Pure ASGI middleware: the request id, its response header and the access line.

    An exception that escapes the app before an answer started becomes a 500 problem here
    (``error_id`` names its log entry); after the answer started it can only be logged.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        raw = next((v for k, v in scope["headers"] if k == HEADER.encode()), None)
        request_id, replaced = accepted_id(raw)
        context, token = enter(request_id)
        status = [0]
        if replaced is not None:
            log.warning("X-Request-ID replaced by %s: %s", request_id, replaced)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.error("unhandled error %s", error_id, exc_info=exc)
            if status[0]:
                raise  # the answer started: nothing else can be sent
            detail = "internal error; quote this id to the operator"
            problem = problems.body("internal-error", 500, detail, scope["path"], error_id=error_id)
            await problems.send(send_with_id, 500, problem)
        finally:
            route = getattr(scope.get("route"), "path", None)
            latency_ms = round((time.perf_counter() - start) * 1000, 2)
            access_log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status[0],
                latency_ms,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "path": scope["path"],
                    "status": status[0],
                    "latency_ms": latency_ms,
                    **context.fields,
                },
            )
            leave(token)
