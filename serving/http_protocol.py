"""uvicorn's httptools protocol with the request head bounded (``SKIN_MAX_HEADER_BYTES``).

httptools (llhttp, in C) parses a request several times cheaper than h11 (pure Python), but
neither it nor uvicorn's protocol on top bounds the head: httptools joins the pieces of a header
value in memory until the value ends, so one 64 MiB header cost the process ~250 MB
(docs/reliability.md). :class:`BoundedHttpToolsProtocol` counts the head's bytes BEFORE they
reach the parser: while a request's head is being received, each chunk's bytes up to the
empty line that ends the head are added up, and once the count passes the cap the connection
gets a 400 and is closed, the chunk never parsed. Body bytes are not counted (the body has its
own cap, serving/limits.py). What the parser may hold of one head is therefore at most the cap.

Use :func:`bounded_httptools` for uvicorn's ``http`` option (``serving.limits.server_options``).
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("serving")
END_OF_HEAD = b"\r\n\r\n"
TOO_LARGE = "Request head too large."


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that refuses a request head over :attr:`max_head_bytes`
    with 400 and closes the connection (a subclass per cap: :func:`bounded_httptools`)."""

    max_head_bytes = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # receiving a request's head (until the parser says it ended)
        self._head_bytes = 0  # of the current head, counted so far
        self._tail = b""  # the last bytes of the previous chunk: an end of head may straddle
        self._refused = False  # answered 400 for a head too large: the rest is dropped

    def data_received(self, data: bytes) -> None:
        if self._refused:  # closing: nothing more is parsed
            return
        if self._in_head:
            window = self._tail + data
            end = window.find(END_OF_HEAD)
            # The head's share of this chunk: all of it, or up to the end of the head.
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = window[-3:]
            if self._head_bytes > self.max_head_bytes:
                log.warning(
                    "request head over %d bytes (SKIN_MAX_HEADER_BYTES): 400, connection closed",
                    self.max_head_bytes,
                )
                self._refused, self._in_head = True, False
                self.send_400_response(TOO_LARGE)
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The next request on this connection (keep-alive) starts with a head again.
        self._in_head, self._head_bytes, self._tail = True, 0, b""
        super().on_message_complete()


def bounded_httptools(max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` option, the head bounded at ``max_head_bytes``."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "__module__": __name__},
    )
