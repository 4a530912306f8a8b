"""The hub's transport: discovery under datagram loss, and TCP links that keep
priority order, stay bounded and come back after the battery goes away."""

import asyncio
import os

import pytest

from hub import transport
from hub.fleet import Fleet, free_port
from protocol import auth, frame, message

pytestmark = pytest.mark.timeout(120)


def codecs():
    keys = auth.Keyring({1: os.urandom(32), 2: os.urandom(32)}, group=os.urandom(32))
    return frame.Codec(keys, key_id=1), frame.Codec(keys, key_id=2)


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
            self.got.extend(f.message for f in decoder.frames(transport.now_ms()))

    async def hang_up(self):
        for writer in self.writers:
            writer.close()
        self.writers.clear()


async def wait_until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


def test_frames_leave_in_etp_priority_order_and_the_queue_is_bounded():
    async def scenario():
        hub, device = codecs()
        rx = Receiver(device)
        await rx.start()
        ids = message.MessageIds(transport.now_ms())
        link = transport.DeviceLink(hub, "127.0.0.1", rx.port, lambda *_: None, queue_size=4)
        for msg in (
            message.query(ids.next()),
            message.bid(ids.next(), 5, 15.0, 1.0),
            message.terminate(ids.next(), 5),
            message.bid_confirm(ids.next(), 5, 15.0, 1.0, 2.0),
        ):
            link.send(msg)  # queued while not connected  # fmt: skip
        with pytest.raises(transport.QueueFull):
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
        hub, device = codecs()
        rx = Receiver(device)
        await rx.start()
        ids = message.MessageIds(transport.now_ms())
        link = transport.DeviceLink(hub, "127.0.0.1", rx.port, lambda *_: None).start()
        await asyncio.wait_for(link.connected.wait(), 5)
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
            keys = {1: fleet.agg_keys[1]}
            keys.update({d.device_id: d.key for d in fleet.devices})
            codec = frame.Codec(auth.Keyring(keys, group=fleet.group_key), key_id=1)
            registry = transport.Registry()
            discovery = transport.Discovery(codec, registry, fleet.group_addr, fleet.group_port,
                                            loss=0.10, seed=4)  # fmt: skip
            await discovery.start()
            ids = message.MessageIds(transport.now_ms())
            found = await discovery.find(ids, 3, timeout_s=15)
            assert sorted(found) == [d.device_id for d in fleet.devices]
            assert discovery.dropped > 0  # the loss was real
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
            ids = message.MessageIds(transport.now_ms())
            status = [
                message.bess_status(ids.next(), 5, 10.0, 5.0, 50.0, 0, 51.0, 1.0)
                for _ in range(100)
            ]
            writer.write(b"".join(device.seal(m, transport.now_ms()) for m in status))
            await writer.drain()

        server = await asyncio.start_server(burst, "127.0.0.1", server_port)
        link = transport.DeviceLink(
            hub, "127.0.0.1", server_port, lambda _l, f: got.append(f)
        ).start()
        await wait_until(lambda: len(got) == 100)
        await link.close()
        server.close()

    asyncio.run(scenario())
