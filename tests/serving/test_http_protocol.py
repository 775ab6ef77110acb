"""The request head stays bounded under httptools (serving/http_protocol.py): a head over the
cap is answered 400 and the connection closed before the parser sees the bytes past the cap;
body bytes never count, wherever the chunks split; keep-alive requests are counted apart."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from serving.http_protocol import BoundedHttpToolsProtocol, bounded_httptools
from serving.limits import server_options
from serving.settings import Settings

CAP = 4096


class Transport:
    """What the protocol writes and whether it closed the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 with the length of the body it read."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def feed(chunks: list[bytes]) -> tuple[Transport, list[int], int]:
    """Feed ``chunks`` to a bounded protocol: what was written, the bytes the parser got, and
    how many requests reached the app."""
    fed: list[int] = []
    calls = [0]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls[0] += 1
        await echo_length(scope, receive, send)

    async def main() -> Transport:
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        config.load()
        protocol = bounded_httptools(CAP)(config, ServerState(), {})
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        real = protocol.parser

        def counted(data: bytes) -> None:
            fed.append(len(data))
            real.feed_data(data)

        protocol.parser = _Spy(real, counted)  # type: ignore[assignment]
        for chunk in chunks:
            protocol.data_received(chunk)
            await asyncio.sleep(0.01)  # let the app answer
        for _ in range(50):
            if not protocol.tasks:
                break
            await asyncio.sleep(0.01)
        return transport

    transport = asyncio.run(main())
    return transport, fed, calls[0]


class _Spy:
    """The real parser, with ``feed_data`` counted."""

    def __init__(self, parser: Any, feed_data: Any) -> None:
        self._parser, self.feed_data = parser, feed_data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def head(pad: int, path: str = "/") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * pad}\r\n".encode()


def request(pad: int, body: bytes) -> bytes:
    return head(pad) + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_server_options_use_the_bounded_httptools_protocol() -> None:
    settings = Settings(max_header_bytes=12345, allow_no_auth=True)  # keys: not the point
    http = server_options(settings)["http"]
    assert issubclass(http, BoundedHttpToolsProtocol)
    assert http.max_head_bytes == 12345


def test_a_head_over_the_cap_in_small_chunks_gets_400_and_is_closed() -> None:
    line = b"x: a\r\n"
    chunks = [b"GET / HTTP/1.1\r\nHost: x\r\n"] + [line * 100 for _ in range(100)]
    transport, fed, calls = feed(chunks)
    assert bytes(transport.written).startswith(b"HTTP/1.1 400")
    assert transport.closed and calls == 0
    assert sum(fed) <= CAP  # the parser never held more of the head than the cap


def test_one_huge_header_in_one_chunk_is_never_parsed() -> None:
    transport, fed, calls = feed([head(2**20)])
    assert bytes(transport.written).startswith(b"HTTP/1.1 400")
    assert transport.closed and calls == 0 and fed == []


def test_bytes_after_the_refusal_are_dropped() -> None:
    # A client that keeps sending after the 400 (before the close reaches it): nothing parsed,
    # one answer only.
    transport, fed, calls = feed([head(CAP), b"x: y\r\n" * 10, b"\r\n"])
    assert bytes(transport.written).count(b"HTTP/1.1 400") == 1
    assert transport.closed and calls == 0 and fed == []


def test_body_bytes_never_count_wherever_the_chunks_split() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB over the cap, never CR LF CR LF
    whole = request(CAP - 200, body)
    end = whole.index(b"\r\n\r\n")
    for split in (end + 1, end + 2, end + 3, end + 4, end + 100):  # the end straddles chunks
        transport, _, calls = feed([whole[:split], whole[split:]])
        assert calls == 1, split
        assert bytes(transport.written).startswith(b"HTTP/1.1 200"), split
        assert bytes(transport.written).endswith(str(len(body)).encode()), split
        assert not transport.closed


def test_head_and_a_large_body_in_one_chunk_pass() -> None:
    body = b"\xff" * 300_000
    transport, _, calls = feed([request(CAP - 200, body)])
    assert calls == 1 and bytes(transport.written).startswith(b"HTTP/1.1 200")


def test_keep_alive_requests_are_counted_apart() -> None:
    # Each head is under the cap; together they are over it: both answered.
    one = request(CAP // 2 + 100, b"abc")
    transport, _, calls = feed([one, one, one])
    assert calls == 3
    assert bytes(transport.written).count(b"HTTP/1.1 200") == 3
    assert not transport.closed
