"""Pure logic of the streaming server: tokens, statuses, resize messages, port mappings."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tests.helpers.streamclient import session_pair
from vmrt.cli.cri_client import CRIError
from vmrt.cli.streams import _mappings
from vmrt.errors import ResourceExhaustedError
from vmrt.streaming import over_spdy, websocket
from vmrt.streaming.remotecommand import exit_status, parse_resize
from vmrt.streaming.tokens import ExecRequest, PortForwardRequest, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_single_use_and_expire_after_a_minute() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    request = ExecRequest("c1", ("true",), tty=False, stdin=False, stdout=True, stderr=True)
    token = cache.put(request)
    assert len(token) >= 16 and token.replace("-", "").replace("_", "").isalnum()
    assert cache.take(token) == request
    assert cache.take(token) is None
    late = cache.put(PortForwardRequest("p1", (80,)))
    clock.now += 59.9
    kept = cache.put(PortForwardRequest("p1", (81,)))
    clock.now += 0.2
    assert cache.take(late) is None
    assert cache.take(kept) == PortForwardRequest("p1", (81,))
    assert len(cache) == 0


def test_token_cache_is_bounded() -> None:
    clock = Clock()
    cache = TokenCache(capacity=3, clock=clock)
    for port in range(3):
        cache.put(PortForwardRequest("p", (port + 1,)))
    with pytest.raises(ResourceExhaustedError, match="3"):
        cache.put(PortForwardRequest("p", (9,)))
    clock.now += 61
    cache.put(PortForwardRequest("p", (9,)))  # the expired ones made room
    assert len(cache) == 1


def test_exit_statuses_are_what_client_go_parses() -> None:
    assert exit_status(["true"], 0) == {"metadata": {}, "status": "Success"}
    status = exit_status(["sh", "-c", "exit 3"], 3)
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert "exit code 3" in status["message"]


@pytest.mark.parametrize(("message", "size"), [
    (b'{"Width":80,"Height":24}', (80, 24)),
    (b'{"Width": 101, "Height": 33}\n', (101, 33)),
    (b'{"Width":0,"Height":24}', None),
    (b'{"Width":80}', None),
    (b"not json", None),
    (b'{"Width":"x","Height":1}', None),
])
def test_resize_messages(message: bytes, size: tuple[int, int] | None) -> None:
    assert parse_resize(message) == size


def test_spdy_resize_stream_values_split_anywhere() -> None:
    async def scenario() -> list[tuple[int, int]]:
        _, client, accepted, tasks = await session_pair()
        ours = await client.open_stream([("streamType", "resize")])
        for piece in (b'{"Width":80,"Hei', b'ght":24}\n{"Width":1', b'00,"Height":40}\n',
                      b'{"Width":-1,"Height":3}\n'):
            await ours.write(piece)
            await asyncio.sleep(0.01)
        await ours.close()
        await asyncio.sleep(0.05)
        sizes = [size async for size in over_spdy._sizes(accepted[0])]
        await client.close()
        await asyncio.gather(*tasks)
        return sizes

    assert asyncio.run(scenario()) == [(80, 24), (100, 40)]


def test_port_mappings_follow_kubectl() -> None:
    assert _mappings(["8080", "9000:80", ":443"]) == [(8080, 8080), (9000, 80), (0, 443)]
    for bad in ("x", "80:", "0", "1:70000"):
        with pytest.raises(CRIError, match="bad port mapping"):
            _mappings([bad])


def test_pod_hostname_falls_back_to_the_nodes() -> None:
    from cri_api.v1 import api_pb2 as api

    from vmrt.runtime.ocispec import pod_hostname

    named = api.PodSandboxConfig(hostname="web-0", metadata=api.PodSandboxMetadata(name="x"))
    assert pod_hostname(named) == "web-0"
    # critest's pod names run past the 64-byte hostname limit; containerd
    # gives such pods the node's hostname, and so does vmrt.
    unnamed = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="p" * 70))
    assert pod_hostname(unnamed) == socket.gethostname()


def test_resize_messages_cannot_blow_up() -> None:
    assert parse_resize(b"[" * 100_000) is None
    assert parse_resize(b'{"Width":80,"Height":24,' + b" " * 5000 + b"}") is None


def test_sessions_per_pod_are_capped() -> None:
    from vmrt.runtime.streams import Slots

    slots = Slots(limit=2)
    first, second = slots.take("pod-a"), slots.take("pod-a")
    other = slots.take("pod-b")
    with pytest.raises(ResourceExhaustedError, match="2 exec, attach and port-forward"):
        slots.take("pod-a")
    first()
    first()  # releasing twice gives back one slot only
    third = slots.take("pod-a")
    with pytest.raises(ResourceExhaustedError):
        slots.take("pod-a")
    for release in (second, third, other):
        release()
    assert slots.used == {}


async def _ws_server_and_client(protocol: str) -> tuple[Any, asyncio.StreamReader,
                                                          asyncio.StreamWriter, Any]:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request

    from vmrt.streaming import websocket

    left, right = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=left)
    reader, writer = await asyncio.open_connection(sock=right)
    client = WSConnection(ConnectionType.CLIENT)
    writer.write(client.send(Request(host="x", target="/exec/t", subprotocols=[protocol])))
    head = await server_reader.readuntil(b"\r\n\r\n")
    sock = await websocket.accept(head, server_reader, server_writer, [protocol])
    assert sock is not None
    client.receive_data(await reader.read(4096))
    list(client.events())
    return sock, reader, writer, client


def test_websocket_text_is_refused_on_binary_protocols_and_capped() -> None:
    from wsproto.events import CloseConnection, TextMessage

    async def scenario(protocol: str, text: str, finished: bool) -> int | None:
        sock, reader, writer, client = await _ws_server_and_client(protocol)
        for start in range(0, len(text), 65536):
            writer.write(client.send(TextMessage(data=text[start:start + 65536],
                                                 message_finished=False)))
        if finished:
            writer.write(client.send(TextMessage(data="", message_finished=True)))
        assert await asyncio.wait_for(sock.receive(), 5) is None
        client.receive_data(await reader.read(4096))
        codes = [e.code for e in client.events() if isinstance(e, CloseConnection)]
        writer.close()
        return codes[0] if codes else None

    assert asyncio.run(scenario("v4.channel.k8s.io", "0aGk=", True)) == 1003
    # An unfinished base64 message larger than any channel message may be
    # (sent up to just past the limit, so the server has read all of it).
    limit = websocket.MAX_MESSAGE * 4 // 3 + 8
    assert asyncio.run(scenario("v4.base64.channel.k8s.io", "0" + "A" * limit,
                                False)) == 1009


def test_tunnel_reads_frames_larger_than_its_buffer() -> None:
    from vmrt.streaming import tunnel

    async def scenario() -> int:
        from wsproto.events import BytesMessage

        sock, _, writer, client = await _ws_server_and_client("SPDY/3.1+portforward.k8s.io")
        pipe = tunnel.TunnelReader(sock)
        big = b"y" * (tunnel.BUFFER_LIMIT * 3)
        for start in range(0, len(big), 65536):
            writer.write(client.send(BytesMessage(data=big[start:start + 65536])))
        data = await asyncio.wait_for(pipe.readexactly(len(big)), 10)
        await pipe.close()
        writer.close()
        return len(data)

    assert asyncio.run(scenario()) == tunnel.BUFFER_LIMIT * 3


def test_a_flood_of_resize_values_does_not_hold_the_event_loop() -> None:
    """400k tiny JSON values in one chunk: the parser lets other tasks run
    while it works through them, and still finds the one size message."""

    async def scenario() -> tuple[list[tuple[int, int]], int]:
        _, client, accepted, tasks = await session_pair()
        ours = await client.open_stream([("streamType", "resize")])
        await ours.write(b"0 " * 400_000 + b'{"Width":7,"Height":9}')
        await ours.close()
        await asyncio.sleep(0.05)
        ticks = 0
        parsing = True

        async def ticker() -> None:
            nonlocal ticks
            while parsing:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        sizes = [size async for size in over_spdy._sizes(accepted[0])]
        parsing = False
        await ticking
        await client.close()
        await asyncio.gather(*tasks)
        return sizes, ticks

    sizes, ticks = asyncio.run(scenario())
    assert sizes == [(7, 9)]
    assert ticks >= 400_000 // 256 // 2, ticks


def test_empty_text_fragments_are_not_kept() -> None:
    from wsproto.events import TextMessage

    async def scenario() -> tuple[int, bytes | None]:
        sock, _, writer, client = await _ws_server_and_client("v4.base64.channel.k8s.io")
        frames = client.send(TextMessage(data="1aGk", message_finished=False))
        frames += b"".join(client.send(TextMessage(data="", message_finished=False))
                           for _ in range(20_000))
        frames += client.send(TextMessage(data="=", message_finished=False))
        writer.write(frames)
        receiving = asyncio.create_task(sock.receive())
        # Once the last fragment is in, every empty one before it was handled.
        for _ in range(500):
            if "".join(sock._partial_text) == "1aGk=":
                break
            await asyncio.sleep(0.01)
        held = len(sock._partial_text)
        writer.write(client.send(TextMessage(data="", message_finished=True)))
        received = await asyncio.wait_for(receiving, 10)
        writer.close()
        return held, received

    held, received = asyncio.run(scenario())
    assert held == 2
    assert received == (1, b"hi")


def test_dropping_a_full_websocket_channel_unblocks_the_reader() -> None:
    from wsproto.events import BytesMessage

    from vmrt.streaming.over_websocket import QUEUE_DEPTH, Demux

    async def scenario() -> bytes:
        sock, _, writer, client = await _ws_server_and_client("v4.channel.k8s.io")
        # Channel 0 is never read: its queue fills and the socket reader
        # blocks on it, so channel 2's message waits behind.
        for _ in range(QUEUE_DEPTH + 2):
            writer.write(client.send(BytesMessage(data=b"\x00stuck")))
        writer.write(client.send(BytesMessage(data=b"\x02other")))
        async with Demux(sock, [0, 2]) as demux:
            await asyncio.sleep(0.2)
            demux.drop(0)
            data = await asyncio.wait_for(demux.read(2), 5)
        writer.close()
        return data

    assert asyncio.run(scenario()) == b"other"


class _SilentPod:
    """Stands in for the agent's side of a port-forward connection: it
    takes what is sent and never answers or closes (pure pump logic)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.half_closed = False
        self.aborted = asyncio.Event()

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def close_write(self) -> None:
        self.half_closed = True

    async def received(self) -> Any:
        await self.aborted.wait()
        return
        yield b""

    def abort(self) -> None:
        self.aborted.set()


def test_port_forward_upload_cut_off_aborts_instead_of_half_closing() -> None:
    from vmrt.streaming.portforward import pump

    async def scenario() -> tuple[_SilentPod, BaseException | None]:
        pod = _SilentPod()
        chunks = [b"part"]

        async def read() -> bytes:
            if chunks:
                return chunks.pop()
            raise ConnectionResetError("the client reset the data stream")

        async def write(data: bytes) -> None:
            pass

        async def close_write() -> None:
            pass

        try:
            await asyncio.wait_for(pump(pod, read, write, close_write), 5)  # type: ignore[arg-type]
        except ConnectionResetError as exc:
            return pod, exc
        return pod, None

    pod, problem = asyncio.run(scenario())
    assert isinstance(problem, ConnectionResetError)
    assert pod.sent == [b"part"]
    assert not pod.half_closed and pod.aborted.is_set()


def test_idle_timer_waits_for_silence() -> None:
    from vmrt.streaming.idle import IdleTimer

    async def scenario() -> tuple[bool, bool]:
        fired = asyncio.Event()
        timer = IdleTimer(1.0, fired.set)
        for _ in range(25):  # 2.5 s of activity, a touch every 0.1 s
            await asyncio.sleep(0.1)
            timer.touch()
        during = fired.is_set()
        await asyncio.wait_for(fired.wait(), 5)
        after = timer.expired
        timer.cancel()
        return during, after

    assert asyncio.run(scenario()) == (False, True)
