"""Frames over real loopback sockets: UDP datagrams and a TCP stream in pieces.

Runs on CPython and on the MicroPython VM (whose unix port has no getsockname,
so free ports are found by trying to bind).
"""

import asyncio
import socket

from checks import raises

from protocol import auth, errors, frame, message

NOW = 1763700000000


def codecs():
    """Aggregator 1 and battery 2, each holding their pair key under the other's id."""
    pair, group = b"p" * 32, b"g" * 32
    sender = frame.Codec(auth.Keyring({2: pair}, group=group), key_id=1, peer=2)
    receiver = frame.Codec(auth.Keyring({1: pair}, group=group), key_id=2)
    return sender, receiver, message.MessageIds(NOW)


def address(port):
    return socket.getaddrinfo("127.0.0.1", port)[0][-1]


def bind_free(sock, first=47100):
    for port in range(first, first + 400):
        try:
            sock.bind(address(port))
            return port
        except OSError:
            pass
    raise OSError("no free loopback port")


def test_frames_cross_a_real_udp_socket():
    sender, receiver, ids = codecs()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = bind_free(rx)
        rx.settimeout(2)
        sent = [
            (message.query(ids.next(), 0, 2.0), True),
            (message.bid(ids.next(), 5, 15.0, 1.0), False),
        ]
        for msg, group in sent:
            tx.sendto(sender.seal(msg, NOW, group=group), address(port))
        tx.sendto(b"not a frame", address(port))
        for msg, group in sent:
            got = receiver.open(rx.recvfrom(512)[0], NOW)
            assert got.message == msg and got.group == group and got.key_id == 1
        raises(errors.BadLength, receiver.open, rx.recvfrom(512)[0], NOW)
    finally:
        rx.close()
        tx.close()


def test_frames_cross_a_real_tcp_stream_in_small_pieces():
    sender, receiver, ids = codecs()
    sent = [message.bid(ids.next(), 5, 15.0 + i, 1.0) for i in range(3)]
    received = []
    done = asyncio.Event()

    async def serve(reader, writer):
        decoder = frame.StreamDecoder(receiver)
        while len(received) < len(sent):
            data = await reader.read(64)
            if not data:
                break
            decoder.feed(data)
            received.extend(got.message for got in decoder.frames(NOW))
        writer.close()
        done.set()

    async def main():
        probe = socket.socket()
        port = bind_free(probe, 47600)
        probe.close()
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = b"garbage" + b"".join(sender.seal(m, NOW) for m in sent)
        for i in range(0, len(stream), 7):  # partial reads on the other side
            writer.write(stream[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 5)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert received == sent
