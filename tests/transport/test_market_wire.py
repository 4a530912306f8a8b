"""transport/market_wire.py: the market API's authenticated session, on real sockets."""

import asyncio
import os

import pytest

from transport import market_wire as wire

pytestmark = pytest.mark.timeout(30)
KEY = os.urandom(32)


async def pair(hub_key=KEY, aggregator_key=KEY):
    """A hub side that answers one hello, and an aggregator that says it. -> (aggregator's
    Session, hub's Session, aggregator's writer, hub's reader, hub's writer)."""
    ready = asyncio.get_running_loop().create_future()

    async def serve(reader, writer):
        _tag, body = await wire.read_frame(reader)
        hello = wire.decode(body)
        nonce = wire.new_nonce()
        writer.write(wire.encode({"type": "challenge", "v": 1, "market": "m", "nonce": nonce}))
        key = wire.session_key(hub_key, hello["nonce"], nonce)
        ready.set_result((wire.Session(key, wire.TO_AGGREGATOR, wire.TO_HUB), reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    mine, challenge = await wire.hello(reader, writer, 7, aggregator_key)
    theirs, hub_reader, hub_writer = await ready
    server.close()
    assert challenge["market"] == "m"
    return mine, theirs, writer, reader, hub_reader, hub_writer


def test_messages_go_both_ways_once_and_in_order():
    async def scenario():
        mine, theirs, writer, reader, hub_reader, hub_writer = await pair()
        for n in range(3):
            writer.write(mine.seal({"type": "bid", "n": n}))
        got = [theirs.open(*await wire.read_frame(hub_reader))["n"] for _ in range(3)]
        hub_writer.write(theirs.seal({"type": "welcome"}))
        back = mine.open(*await wire.read_frame(reader))
        return got, back

    got, back = asyncio.run(scenario())
    assert got == [0, 1, 2] and back == {"type": "welcome"}


def test_a_replayed_reordered_reflected_or_altered_message_fails():
    async def scenario():
        mine, theirs, *_ = await pair()
        first, second = mine.seal({"type": "bid", "n": 0}), mine.seal({"type": "bid", "n": 1})
        tag, body = first[4:20], first[20:]
        assert theirs.open(tag, body)["n"] == 0
        faults = []
        for name, (t, b) in {
            "replayed": (tag, body),
            "altered": (second[4:20], second[20:].replace(b"1", b"9")),
        }.items():
            with pytest.raises(wire.WireError, match="bad tag"):
                theirs.open(t, b)
            faults.append(name)
        # the hub's own message sent back to it: its direction is the other one
        echo = theirs.seal({"type": "welcome"})
        with pytest.raises(wire.WireError):
            theirs.open(echo[4:20], echo[20:])
        assert theirs.open(second[4:20], second[20:])["n"] == 1  # in order, it still opens
        return faults

    assert asyncio.run(scenario()) == ["replayed", "altered"]


def test_another_key_fails_at_the_first_message():
    async def scenario():
        mine, theirs, *_ = await pair(aggregator_key=os.urandom(32))
        sealed = mine.seal({"type": "subscribe"})
        with pytest.raises(wire.WireError, match="bad tag"):
            theirs.open(sealed[4:20], sealed[20:])

    asyncio.run(scenario())


def test_sizes_are_checked_before_reading_and_bodies_before_parsing():
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data((wire.MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(wire.WireError, match="frame of"):
            await wire.read_frame(reader)
        for bad in (b"[1]", b"{}", b"\xff", b'{"type": 3}'):
            with pytest.raises(wire.WireError):
                wire.decode(bad)
        with pytest.raises(wire.WireError):
            wire.encode({"type": "x", "v": float("nan")})
        with pytest.raises(wire.WireError):
            wire.session_key(KEY, "00" * 8, "00" * 16)  # a short nonce

    asyncio.run(scenario())
