"""The hub's transport: discovery under datagram loss, and TCP links that keep
priority order, stay bounded and come back after the battery goes away."""

import asyncio
import os
import socket

import pytest

from protocol import auth, frame, message, pairing
from simulator.fleet import Fleet, free_port
from transport import discovery, links

pytestmark = pytest.mark.timeout(120)


def codecs():
    """An aggregator (1) and a battery (2) sharing one pair key."""
    pair, group = os.urandom(32), os.urandom(32)
    return (frame.Codec(auth.Keyring({2: pair}, group=group), key_id=1, peer=2),
            frame.Codec(auth.Keyring({1: pair}, group=group), key_id=2, peer=1))  # fmt: skip


class Receiver:
    """A TCP peer that records the frames it gets; can hang up on demand."""

    def __init__(self, codec):
        self.codec, self.got, self.writers = codec, [], []

    async def start(self):
        self.port = free_port()
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)

    async def serve(self, reader, writer):
        self.writers.append(writer)
        decoder = frame.StreamDecoder(self.codec)
        while data := await reader.read(4096):
            decoder.feed(data)
            self.got.extend(f.message for f in decoder.frames(links.now_ms()))

    async def hang_up(self):
        for writer in self.writers:
            writer.close()
        self.writers.clear()


async def receiving_link(**options):
    """A Receiver listening, a DeviceLink to it (not started yet), and message ids."""
    hub, device = codecs()
    rx = Receiver(device)
    await rx.start()
    link = links.DeviceLink(hub, "127.0.0.1", rx.port, lambda *_: None, **options)
    return rx, link, message.MessageIds(links.now_ms())


async def wait_until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


def test_frames_leave_in_etp_priority_order_and_the_queue_is_bounded():
    async def scenario():
        rx, link, ids = await receiving_link(queue_size=4)
        for msg in (
            message.query(ids.next()),
            message.bid(ids.next(), 5, 15.0, 1.0),
            message.terminate(ids.next(), 5),
            message.bid_confirm(ids.next(), 5, 15.0, 1.0, 2.0),
        ):
            link.send(msg)  # queued while not connected  # fmt: skip
        with pytest.raises(links.QueueFull):
            link.send(message.query(ids.next()))
        link.start()
        await wait_until(lambda: len(rx.got) == 4)
        kinds = [m.message_type for m in rx.got]
        assert kinds == [message.BID_CONFIRM, message.BID, message.TERMINATE, message.QUERY]
        await link.close()
        rx.server.close()

    asyncio.run(scenario())


def test_a_link_comes_back_after_the_peer_hangs_up():
    async def scenario():
        rx, link, ids = await receiving_link()
        await asyncio.wait_for(link.start().connected.wait(), 5)
        link.send(message.query(ids.next()))
        await wait_until(lambda: len(rx.got) == 1)
        await rx.hang_up()
        await wait_until(lambda: link.reconnects >= 1 and link.connected.is_set())
        link.send(message.query(ids.next()))
        await wait_until(lambda: len(rx.got) == 2)
        await link.close()
        rx.server.close()

    asyncio.run(scenario())


def test_discovery_finds_every_battery_through_10_percent_loss(tmp_path):
    async def scenario():
        fleet = Fleet(tmp_path, aggregators=(1,))
        try:
            for _ in range(3):
                await fleet.add()
            await asyncio.gather(*(d.start() for d in fleet.devices))
            # the market maker's side: its pair keys with the batteries, derived from its
            # master secret (what it acts on comes sealed for it), and the group key
            keyring = pairing.DerivedKeyring(fleet.hub_master, pairing.LABEL_ETP, fleet.group_key)
            codec = frame.Codec(keyring, key_id=0)
            registry = discovery.Registry()
            finder = discovery.Discovery(codec, registry, fleet.group_addr, fleet.group_port,
                                         loss=0.10, seed=4)  # fmt: skip
            await finder.start()
            ids = message.MessageIds(links.now_ms())
            found = await finder.find(ids, 3, timeout_s=15)
            assert sorted(found) == [d.device_id for d in fleet.devices]
            assert finder.dropped > 0  # the loss was real
            for device in fleet.devices:
                info = registry.devices[device.device_id]
                assert info.address == device.address and info.offer_kwh > 0 and info.reserve > 0
        finally:
            await fleet.close()

    asyncio.run(scenario())


def test_a_full_read_of_many_frames_loses_none():
    """A burst bigger than a small decoder's buffer (33 frames in one 4 KB read)."""

    async def scenario():
        hub, device = codecs()
        got = []
        server_port = free_port()

        async def burst(reader, writer):
            ids = message.MessageIds(links.now_ms())
            status = [
                message.bess_status(ids.next(), 5, 10.0, 5.0, 50.0, 0, 51.0, 1.0)
                for _ in range(100)
            ]
            writer.write(b"".join(device.seal(m, links.now_ms()) for m in status))
            await writer.drain()

        server = await asyncio.start_server(burst, "127.0.0.1", server_port)
        link = links.DeviceLink(hub, "127.0.0.1", server_port, lambda _l, f: got.append(f)).start()
        await wait_until(lambda: len(got) == 100)
        await link.close()
        server.close()

    asyncio.run(scenario())


def test_a_frame_is_written_at_once_when_nothing_waits():
    """No queue and no sender task in the way: send() hands the frame to the socket."""

    async def scenario():
        rx, link, ids = await receiving_link()
        await asyncio.wait_for(link.start().connected.wait(), 5)
        for n in range(1, 4):
            link.send(message.bid(ids.next(), 5, 15.0, 1.0))
            assert link.queue.empty()
            # Written, not waiting in the transport: the kernel has taken all of it.
            assert link._session.transport.get_write_buffer_size() == 0
            await wait_until(lambda n=n: len(rx.got) == n)
        await link.close()
        rx.server.close()

    asyncio.run(scenario())


def test_frames_that_wait_for_a_slow_peer_leave_most_urgent_first():
    """A battery that stops reading: once the socket and the transport's few frames are
    full, frames wait in the queue, and the DeviceFailure goes first when it reads again;
    nothing sent after that jumps the queue, and direct writes resume once it is empty."""

    async def scenario():
        hub, device = codecs()
        got, readers = [], []
        decoder = frame.StreamDecoder(device)

        class Slow(asyncio.Protocol):
            def connection_made(self, tr):
                tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                tr.pause_reading()
                readers.append(tr)

            def data_received(self, data):
                decoder.feed(data)
                got.extend(f.message for f in decoder.frames(links.now_ms()))

        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        server = await loop.create_server(Slow, sock=listener)
        port = listener.getsockname()[1]
        ids = message.MessageIds(links.now_ms())
        link = links.DeviceLink(hub, "127.0.0.1", port, lambda *_: None, queue_size=8)
        link.start()
        await asyncio.wait_for(link.connected.wait(), 5)
        link._session.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        direct = 0
        while link.queue.empty():  # fill the peer's socket, ours, then the transport's buffer
            link.send(message.query(ids.next()))
            direct += 1
            assert direct < 100_000, "the link never started queueing"
        assert link._session.transport.get_write_buffer_size() > 0
        urgent = [
            message.bid(ids.next(), 5, 15.0, 1.0),
            message.terminate(ids.next(), 5),
            message.bid_confirm(ids.next(), 5, 15.0, 1.0, 2.0),
            message.device_failure(ids.next(), 5, 1, message.HEALTH_FAULT, 1.0, 48.0),
            message.bess_status(ids.next(), 5, 10.0, 5.0, 50.0, 0, 51.0, 1.0),
        ]
        for msg in urgent:
            link.send(msg)
        assert link.queue.qsize() == 1 + len(urgent)  # none bypassed the queue
        readers[0].resume_reading()
        await wait_until(lambda: len(got) == direct + len(urgent))
        assert all(m.message_type == message.QUERY for m in got[: direct - 1])
        kinds = [m.message_type for m in got[direct - 1 :]]
        assert kinds == [
            message.DEVICE_FAILURE,
            message.BID_CONFIRM,
            message.BID,
            message.TERMINATE,
            message.BESS_STATUS,
            message.QUERY,
        ]
        link.send(message.query(ids.next()))  # drained: straight out again
        assert link.queue.empty()
        await wait_until(lambda: len(got) == direct + len(urgent) + 1)
        await link.close()
        server.close()

    asyncio.run(scenario())


def test_on_connect_frames_join_the_waiting_ones_in_priority_order():
    async def scenario():
        def hello(link):
            link.send(message.query(ids.next()))
            link.send(message.bid_confirm(ids.next(), 5, 15.0, 1.0, 2.0))

        rx, link, ids = await receiving_link(on_connect=hello)
        link.send(message.bid(ids.next(), 5, 15.0, 1.0))  # waits: not connected yet
        link.start()
        await wait_until(lambda: len(rx.got) == 3)
        kinds = [m.message_type for m in rx.got]
        assert kinds == [message.BID_CONFIRM, message.BID, message.QUERY]
        await link.close()
        rx.server.close()

    asyncio.run(scenario())


def test_a_handler_that_raises_is_reported_and_the_link_reads_on():
    async def scenario():
        hub, device = codecs()
        loop = asyncio.get_running_loop()
        reported, got = [], []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        server_port = free_port()

        async def talk(reader, writer):
            ids = message.MessageIds(links.now_ms())
            for _ in range(3):
                status = message.bess_status(ids.next(), 5, 10.0, 5.0, 50.0, 0, 51.0, 1.0)
                writer.write(device.seal(status, links.now_ms()))
                await writer.drain()
                await asyncio.sleep(0.01)

        def handler(_link, f):
            got.append(f)
            if len(got) == 1:
                raise RuntimeError("a bug in the hub's handler")

        server = await asyncio.start_server(talk, "127.0.0.1", server_port)
        link = links.DeviceLink(hub, "127.0.0.1", server_port, handler).start()
        await wait_until(lambda: len(got) == 3)
        assert link.reconnects == 0 and link.connected.is_set()
        assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)
        await link.close()
        server.close()

    asyncio.run(scenario())


def feed(session, data):
    """One read of `data`, as the transport makes it (get_buffer, recv_into, buffer_updated)."""
    buffer = session.get_buffer(-1)
    buffer[: len(data)] = data
    session.buffer_updated(len(data))


def test_reads_split_anywhere_with_garbage_and_a_forged_frame_lose_only_those():
    """Whole-frame reads skip the stream decoder; split frames, garbage and a frame that
    fails its tag go through it; either way every good frame comes out, in order."""

    async def scenario():
        hub, device = codecs()
        got = []
        link = links.DeviceLink(hub, "127.0.0.1", 9, lambda _l, f: got.append(f))
        session = links._Session(link, asyncio.get_running_loop())
        ids = message.MessageIds(links.now_ms())
        msgs = [
            message.bess_status(ids.next(), 5, 10.0, 5.0, 50.0, 0, 51.0, 1.0) for _ in range(14)
        ]
        now = links.now_ms()
        frames = [device.seal(m, now) for m in msgs]
        frames[2] = device.seal(msgs[2], now - 60_000)  # expired: dropped, in step
        frames[10] = bytearray(frames[10])
        frames[10][-1] ^= 1  # forged
        frames[10] = bytes(frames[10])
        for data in (
            frames[0],  # one whole frame
            frames[1] + frames[2] + frames[3],  # three
            frames[4] + frames[5][:50],  # split ...
            frames[5][50:],  # ... and completed
            frames[6] + frames[1],  # whole again, one replayed: dropped, in step
            frames[7],
        ):
            feed(session, data)
        assert session.in_step and len(got) == 7
        for data in (
            b"garbage" + frames[8],  # resynchronised by the decoder
            frames[9] + frames[10] + frames[11],  # a bad tag among good ones
            frames[12],
            frames[13][:1],
            frames[13][1:],
        ):
            feed(session, data)
        assert not session.in_step
        want = [m.message_id for i, m in enumerate(msgs) if i not in (2, 10)]
        assert [f.message.message_id for f in got] == want

    asyncio.run(scenario())


def test_a_question_nobody_waits_for_is_dropped_not_sent_on_reconnect():
    """A Bid queued while the battery is away, whose buyer stopped waiting (expires_ms),
    must not reach the battery when the link comes back: it would accept a bid nobody
    confirms. A frame without an expiry still goes."""

    async def scenario():
        rx, link, ids = await receiving_link()
        stale = message.bid(ids.next(), 5, 15.0, 1.0)
        kept = message.bid(ids.next(), 5, 16.0, 1.0)
        link.send(stale, expires_ms=links.now_ms() + 50)  # not started: both wait
        link.send(kept)
        assert link.queue.qsize() == 2
        await asyncio.sleep(0.1)  # the buyer's wait ends
        await asyncio.wait_for(link.start().connected.wait(), 5)
        await wait_until(lambda: len(rx.got) == 1)
        await asyncio.sleep(0.1)
        assert [m.message_id for m in rx.got] == [kept.message_id] and link.expired == 1
        await link.close()
        rx.server.close()

    asyncio.run(scenario())
