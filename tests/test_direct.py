"""squall.http.direct on real sockets: a TCP connection on 127.0.0.1 and uvloop's loop.

The server side is accepted as the acceptor accepts (a descriptor, made a
`_socket.socket`), written through `DirectTransport`, and handed to the
loop's transport with `connect_accepted_socket`; the client side is an
ordinary socket that reads what arrived. Every wait is bounded.
"""

from __future__ import annotations

import _socket
import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from squall.http.direct import DirectTransport, HandedSocket


class Recorder(asyncio.Protocol):
    """A protocol that notes what it is told, and lets the loop's transport take over."""

    def __init__(self) -> None:
        self.direct: DirectTransport | None = None
        self.transport: Any = None
        self.events: list[str] = []
        self.received = b""
        self.lost: asyncio.Future[Exception | None] | None = None

    def connection_made(self, transport: Any) -> None:
        if self.transport is not None and self.direct is not None:
            self.events.append("handed over")
            self.direct.hand_over(transport)
        else:
            self.events.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False  # the transport closes

    def pause_writing(self) -> None:
        self.events.append("pause writing")

    def resume_writing(self) -> None:
        self.events.append("resume writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture
def pair() -> Iterator[tuple[int, socket.socket]]:
    """(the server side's descriptor, as accept gives it; the client's socket)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        fd, _ = listener._accept()  # type: ignore[attr-defined]
    with client:
        yield fd, client


def direct_on(fd: int, protocol: Recorder, sndbuf: int | None = None) -> DirectTransport:
    sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    direct = DirectTransport(sock, ("127.0.0.1", 1), protocol)
    protocol.direct = direct
    protocol.connection_made(direct)
    return direct


def read_to_end(client: socket.socket) -> bytes:
    received = b""
    client.settimeout(5)
    while chunk := client.recv(1 << 20):
        received += chunk
    return received


async def hand_over(direct: DirectTransport, protocol: Recorder) -> None:
    """What the acceptor does: the loop's transport, for the same protocol."""
    loop = asyncio.get_running_loop()
    protocol.lost = loop.create_future()
    await loop.connect_accepted_socket(lambda: protocol, HandedSocket(direct.detach(), 2))  # type: ignore[arg-type]


def run(coro: Any, protocol: Recorder) -> Any:
    """`coro` on uvloop's loop, bounded; the loop's transport is closed however it ends."""

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(coro, 10)
        finally:
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.abort()  # a loop does not close while a transport is open
                await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def test_an_answer_the_socket_takes_whole_is_sent_and_closed_there(
    pair: tuple[int, socket.socket],
) -> None:
    fd, client = pair
    protocol = Recorder()
    direct = direct_on(fd, protocol)
    direct.write(b"HTTP/1.1 200 OK\r\n")
    direct.writelines([b"Content-Length: 2\r\n\r\n", b"hi"])
    assert direct.get_write_buffer_size() == 0 and not direct.closed
    direct.close()
    assert direct.closed and direct.error is None and direct.is_closing()
    direct.write(b"after the close")  # dropped, as a closing transport drops it
    assert read_to_end(client) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert protocol.events == ["made"]


def test_what_the_socket_did_not_take_is_sent_by_the_loops_transport(
    pair: tuple[int, socket.socket],
) -> None:
    fd, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    protocol = Recorder()
    direct = direct_on(fd, protocol, sndbuf=4096)
    body = bytes(i % 251 for i in range(1 << 20))
    direct.write(body[:1000])
    direct.write(body[1000:])
    held = direct.get_write_buffer_size()
    assert 0 < held < len(body)
    assert protocol.events == ["made", "pause writing"]  # past the high-water mark
    direct.write(b"tail")
    direct.close()  # with bytes held: the loop's transport closes, once they are out
    assert not direct.closed and direct.is_closing()

    async def main() -> bytes:
        await hand_over(direct, protocol)
        loop = asyncio.get_running_loop()
        received = await loop.run_in_executor(None, read_to_end, client)
        assert protocol.lost is not None
        assert await protocol.lost is None
        return received

    assert run(main(), protocol) == body + b"tail"
    assert protocol.events[:3] == ["made", "pause writing", "handed over"]
    assert "resume writing" in protocol.events and protocol.events[-1] == "lost"


def test_a_half_close_asked_before_the_hand_over_is_made_by_the_loops_transport(
    pair: tuple[int, socket.socket],
) -> None:
    # The lingering close: the response, the write side shut, and what the
    # client sends after it still read (and dropped by the protocol).
    fd, client = pair
    protocol = Recorder()
    direct = direct_on(fd, protocol)
    direct.write(b"the answer")
    direct.write_eof()
    direct.pause_reading()
    direct.resume_reading()
    assert direct.can_write_eof() and not direct.closed

    async def main() -> None:
        await hand_over(direct, protocol)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, read_to_end, client) == b"the answer"
        client.sendall(b"more from the client")
        client.shutdown(socket.SHUT_WR)
        assert protocol.lost is not None
        await protocol.lost

    run(main(), protocol)
    assert protocol.received == b"more from the client"
    assert protocol.events == ["made", "handed over", "eof", "lost"]


def test_after_the_hand_over_every_call_goes_to_the_loops_transport(
    pair: tuple[int, socket.socket],
) -> None:
    fd, client = pair
    protocol = Recorder()
    direct = direct_on(fd, protocol)
    direct.set_write_buffer_limits(high=1000)
    assert direct.get_write_buffer_limits() == (250, 1000)
    with pytest.raises(RuntimeError):
        direct.set_protocol(Recorder())  # the loop's transport is made for this protocol

    async def main() -> None:
        await hand_over(direct, protocol)
        real = protocol.transport
        assert real is not direct
        assert direct.get_write_buffer_limits() == real.get_write_buffer_limits() == (250, 1000)
        assert direct.get_extra_info("peername") == client.getsockname()
        assert direct.is_reading() and not direct.is_closing()
        direct.write(b"through the old reference")
        direct.close()
        assert real.is_closing()
        assert protocol.lost is not None
        await protocol.lost

    run(main(), protocol)
    assert read_to_end(client) == b"through the old reference"


def test_a_write_to_a_reset_connection_closes_it_with_the_error(
    pair: tuple[int, socket.socket],
) -> None:
    fd, client = pair
    protocol = Recorder()
    direct = direct_on(fd, protocol)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset
    for _ in range(3):  # the first write may be taken before the reset is seen
        direct.write(b"x" * 1000)
        if direct.closed:
            break
    assert direct.closed and isinstance(direct.error, OSError)
    assert direct.get_write_buffer_size() == 0


def test_an_abort_drops_what_is_held(pair: tuple[int, socket.socket]) -> None:
    fd, client = pair
    protocol = Recorder()
    direct = direct_on(fd, protocol, sndbuf=4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    direct.write(b"x" * (2 << 20))
    assert direct.get_write_buffer_size() > 0
    direct.abort()
    assert direct.closed and direct.get_write_buffer_size() == 0
    assert len(read_to_end(client)) < 2 << 20


def test_reading_paused_before_the_hand_over_stays_paused(
    pair: tuple[int, socket.socket],
) -> None:
    # uvloop starts reading once connection_made returns, paused or not: a
    # pause asked through the direct transport (a WebSocket session whose app
    # lags, opened in the first packet) holds on the loop's transport.
    fd, client = pair
    protocol = Recorder()
    direct = direct_on(fd, protocol)
    direct.pause_reading()

    async def main() -> None:
        await hand_over(direct, protocol)
        try:
            client.sendall(b"held back")
            await asyncio.sleep(0.3)
            assert protocol.received == b"" and not direct.is_reading()
            direct.resume_reading()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while protocol.received != b"held back" and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert protocol.received == b"held back"
        finally:
            direct.close()
        assert protocol.lost is not None
        await protocol.lost

    run(main(), protocol)


class _Answers:
    """An app that answers every request at once (`App`)."""

    def begin(self, cycle: Any) -> bool:
        return False

    def handle(self, cycle: Any) -> None:
        cycle.respond(200, [(b"content-type", b"text/plain")], b"ok")


def test_a_connection_served_at_accept_is_counted_once_while_it_is_handed_over() -> None:
    # A keep-alive connection whose first request was answered on its socket is
    # among the worker's connections at once, and then handed to the loop. Counted
    # also as "in hand" meanwhile, it made --max-connections pause accepting below
    # the limit, and nothing resumed it until a connection closed.
    from squall.http.accept import Acceptor, Acceptors
    from squall.http.core import DEFAULT_LIMITS
    from squall.http.protocol import ProtocolMaker
    from squall.http.state import ServerState

    async def scenario() -> tuple[int, int, bool]:
        state = ServerState(_Answers(), DEFAULT_LIMITS, keepalive_timeout=5.0)  # type: ignore[arg-type]
        group = Acceptors(state.connections, limit=3)
        state.room_freed = group.room_freed
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            acceptor = Acceptor(
                listener, ProtocolMaker(state, "http", None), has_room=group.has_room, limit=3
            )
            group.members.append(acceptor)
            client = socket.create_connection(listener.getsockname(), timeout=5)
            with client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                await asyncio.sleep(0.05)  # the request is in the server's socket
                acceptor.start()  # ... but its listener starts only now (add_reader)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                while not state.connections and loop.time() < deadline:
                    await asyncio.sleep(0)
                # Served on the socket and being handed to the loop, in this pass.
                counted = len(state.connections), group.pending()
                room = group.has_room()
                await asyncio.sleep(0.1)  # the answer goes out (held to the end of the pass)
                client.settimeout(5)
                assert client.recv(1024).startswith(b"HTTP/1.1 200 ")
                for connection in list(state.connections):
                    connection.close()
                acceptor.close()
                state.stop_ticker()
                await asyncio.sleep(0.05)
        return counted[0], counted[1], room

    served, in_hand, room = uvloop.run(scenario())
    assert (served, in_hand) == (1, 0)  # once: among the connections, not also in hand
    assert room
