"""Floods at a battery (issue 17, rows 1 and 2), the firmware on the MicroPython VM
with real sockets, and a real aggregator trading through them.

- 12 slow-loris connections (1 byte every 2 s, no key): before, auth_ms was a timeout per
  read, so a byte every 2 s kept each connection for good, and unauthenticated connections
  held max_peers' slots: 0 contracts in 56 s. Now a connection has auth_ms from its accept,
  strangers draw from their own pool of max_unauthenticated, and the aggregator trades.
- 5,000 bad frames over TCP and on the group: before, one log line each (17,009 lines in
  ~2 s). Now a few lines (one per peer per 10 s), and the battery still answers.
- A 10 MB "header bomb" (ETP frames are fixed-size, so there is no length to lie about:
  10 MB of frame starts and garbage): before, 690k log lines and 14 s of CPU. Now the
  connection is closed after 8 bad frames: bounded CPU, one line.

Each test failed on the code before the fix (checked with the firmware of main).
"""

import asyncio
import os
import time

import pytest

from protocol import auth, frame, message
from simulator.fleet import Fleet
from transport.discovery import group_socket

pytestmark = pytest.mark.timeout(120)


def run(tmp_path, scenario, **settings):
    async def main():
        fleet = Fleet(tmp_path, aggregators=(1,), **settings)
        try:
            return await scenario(fleet)
        finally:
            await fleet.close()

    return asyncio.run(main())


def cpu_s(pid):
    """User + system CPU seconds of a process (/proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def trade(fleet, device, within_s):
    """A real aggregator connects (again, while it is refused) and buys: its BidAccept."""
    agg = await fleet.aggregator(1)
    deadline = time.monotonic() + within_s
    while True:
        link = None
        try:
            link = await agg.connect(device.address, fleet.tcp_port, device.device_id)
            offer = await link.query()
            break
        except (ConnectionError, OSError, TimeoutError, asyncio.TimeoutError):
            if link is not None:  # refused: its reader ends (reset), retrieved here
                await asyncio.gather(link.task, return_exceptions=True)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    bid = await link.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total)
    answer, _at = await link.answer(bid)
    return answer.message.message_type


def test_slow_loris_connections_do_not_stop_trading(tmp_path):
    async def scenario(fleet):
        device = await fleet.add()
        await device.start()
        lorises = [await asyncio.open_connection(device.address, fleet.tcp_port)
                   for _ in range(12)]  # fmt: skip

        async def drip(writer):  # 1 byte every 2 s, no key, for as long as it is let
            try:
                while True:
                    writer.write(b"E")
                    await writer.drain()
                    await asyncio.sleep(2)
            except (ConnectionError, OSError):
                return

        drips = [asyncio.create_task(drip(w)) for _r, w in lorises]
        await asyncio.sleep(1)
        started = time.monotonic()
        kind = await trade(fleet, device, within_s=20)
        took = time.monotonic() - started
        # every slow connection is closed by its deadline (auth_ms from its accept)
        await asyncio.sleep(6)
        closed = sum(1 for task in drips if task.done())
        for task in drips:
            task.cancel()
        await asyncio.gather(*drips, return_exceptions=True)
        for _reader, writer in lorises:
            writer.close()
        return kind, took, closed

    kind, took, closed = run(tmp_path, scenario)  # auth_ms 5000: a byte every 2 s
    print("slow loris: BidAccept %.1f s after 12 slow connections, %d closed" % (took, closed))
    assert kind == message.BID_ACCEPT
    assert took < 12, took  # the pool's strangers are closed 5 s after their accept
    assert closed == 12, closed


def bad_frames(device_id, count):
    """Frames of a stranger: a key id the battery trusts (1), a tag made with a wrong key."""
    codec = frame.Codec(auth.Keyring({device_id: os.urandom(32)}, group=os.urandom(32)), 1)
    ids = message.MessageIds(int(time.time() * 1000))
    now = int(time.time() * 1000)
    return [codec.seal(message.query(ids.next(), device_id), now, to=device_id)
            for _ in range(count)]  # fmt: skip


def test_5000_bad_frames_give_a_few_lines_and_the_battery_still_trades(tmp_path):
    async def scenario(fleet):
        device = await fleet.add()
        await device.start()
        mark = len(device.lines)
        frames = bad_frames(device.device_id, 2500)
        sent = 0
        while sent < len(frames):  # TCP: 8 a connection, then it is closed
            reader, writer = await asyncio.open_connection(device.address, fleet.tcp_port)
            try:
                writer.write(b"".join(frames[sent : sent + 50]))
                await writer.drain()
                await asyncio.wait_for(reader.read(100), 5)
            except (ConnectionError, OSError):
                pass
            writer.close()
            sent += 50
        group = group_socket(fleet.group_addr, fleet.group_port)
        for data in bad_frames(device.device_id, 2500):  # the group: a wrong group key
            group.sendto(data[:3] + b"\x01" + data[4:], (fleet.group_addr, fleet.group_port))
        group.close()
        kind = await trade(fleet, device, within_s=10)
        return kind, device.lines[mark:]

    kind, lines = run(tmp_path, scenario)
    refused = [line for line in lines if line.startswith("refused ")]
    print("5,000 bad frames: %d lines, %d refusal lines" % (len(lines), len(refused)))
    assert kind == message.BID_ACCEPT
    assert 1 <= len(refused) <= 4, refused
    assert len(lines) < 40, lines[:40]


def test_a_10_mb_header_bomb_costs_bounded_cpu_and_one_line(tmp_path):
    async def scenario(fleet):
        device = await fleet.add()
        await device.start()
        mark, before = len(device.lines), cpu_s(device.process.pid)
        bomb = (b"ET\x01\x00" + os.urandom(12)) * (10 * 2**20 // 16)  # 10 MB
        reader, writer = await asyncio.open_connection(device.address, fleet.tcp_port)
        accepted = 0
        try:
            for start in range(0, len(bomb), 65536):
                writer.write(bomb[start : start + 65536])
                await asyncio.wait_for(writer.drain(), 5)
                accepted += 65536
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        writer.close()
        await asyncio.sleep(1)
        used = cpu_s(device.process.pid) - before
        kind = await trade(fleet, device, within_s=10)
        return kind, used, accepted, device.lines[mark:]

    kind, used, accepted, lines = run(tmp_path, scenario)
    print("10 MB bomb: %d bytes taken, %.2f s CPU, %d lines" % (accepted, used, len(lines)))
    assert kind == message.BID_ACCEPT
    assert accepted < 10 * 2**20, "the battery read the whole bomb"
    assert used < 2.0, used  # the battery's CPU for the whole attack and a trade
    assert sum(line.startswith("refused ") for line in lines) <= 2, lines[:20]
