"""The board's clock (firmware/board_clock.py) on the MicroPython VM: the board starts at
2000-01-01 as a real one does after a power cut (hardware/boards/unix.json's "clock_at_boot_s"),
sets it from an NTP server on loopback (tests/helpers/ntp_server.py; port
123 needs root, as CI has), and only then trades with a real aggregator. Before
board_clock.py the same board came up at 2000-01-01 and every frame was refused."""

import asyncio
import struct
import time

import board
import board_clock
import pytest
from helpers import ntp_server

from protocol import message
from simulator.fleet import Fleet

CPYTHON_ONLY = "starts batteries on the VM as subprocesses, and an NTP server"

pytestmark = pytest.mark.timeout(120)

NTP = ntp_server.ADDRESS
YEARS_25_MS = 25 * 365 * 86400 * 1000


def run(tmp_path, scenario, **settings):
    async def main():
        fleet = Fleet(tmp_path, board=ntp_server.unset_board(tmp_path), ntp_servers=[NTP],
                      ntp_timeout_ms=500, **settings)  # fmt: skip
        server = None
        try:
            server = await ntp_server.start(NTP)
            return await scenario(fleet, server)
        finally:
            if server is not None:
                server.transport.close()
            await fleet.close()

    return asyncio.run(main())


async def trade(fleet, device):
    """A query, a bid, its acceptance and confirmation: a contract on the battery."""
    agg = await fleet.aggregator(1)
    link = await agg.connect(device.address, fleet.tcp_port, device.device_id)
    offer = await link.query()
    assert offer.energy_total > 0
    bid = await link.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total)
    accept, _ = await link.answer(bid)
    assert accept.message.message_type == message.BID_ACCEPT
    await link.confirm(accept, kw=2.0)
    await device.wait_for("contract ", timeout=5)
    return link


async def starts_at_2000_and_trades(fleet, server):
    device = await fleet.add()
    await device.start()
    # Without board_clock.py this board is ready at 2000-01-01 and the aggregator's Query is
    # refused as "dated in the future": the trade below fails (checked by reverting app.py).
    await trade(fleet, device)
    line = await device.wait_for("clock: set from NTP %s" % NTP)
    moved = int(line.split("moved ")[1].split()[0])
    assert moved > YEARS_25_MS, line  # it did start at 2000-01-01
    assert server.requests >= 1


def test_a_board_starting_at_2000_sets_its_clock_from_ntp_and_trades(tmp_path):
    run(tmp_path, starts_at_2000_and_trades)


async def no_ntp_no_trading(fleet, server):
    server.transport.close()  # NTP down: nothing answers on 127.0.0.123:123
    device = await fleet.add()
    await device.start(ready=None)
    first = await device.wait_for("retrying in 1 s")
    assert "clock: not set" in first and "not trading until NTP answers" in first, first
    assert "%s:" % NTP in first, first  # names the server that failed
    await device.wait_for("retrying in 2 s", timeout=5)  # backing off
    assert not any("ready on" in line for line in device.lines)
    with pytest.raises(OSError):  # not listening: no aggregator can even connect
        await asyncio.open_connection(device.address, fleet.tcp_port)
    assert device.process.returncode is None  # and it did not crash
    assert not any("Traceback" in line for line in device.lines), device.lines

    revived = await ntp_server.start(NTP)  # NTP back: the next try sets the clock
    try:
        await device.wait_for("ready on", timeout=10)
        await trade(fleet, device)
    finally:
        revived.transport.close()
    tries = sum(1 for line in device.lines if "clock: not set" in line)
    assert 2 <= tries <= 4, tries  # one line per try, the tries backing off


def test_without_ntp_the_battery_says_so_retries_and_does_not_trade(tmp_path):
    run(tmp_path, no_ntp_no_trading)


async def reset_mid_contract_without_ntp(fleet, server):
    device = await fleet.add()
    await device.start()
    await trade(fleet, device)
    await device.wait_for("started:", timeout=15)  # at the next 10 s slot boundary
    await asyncio.sleep(1.5)
    assert device.sim.setpoint_w() > 0  # discharging for the contract
    await device.kill()  # a watchdog reset: the inverter keeps its setpoint
    server.transport.close()  # and NTP is down
    mark = len(device.lines)
    await device.start(ready=None)
    await device.wait_for("clock: not set", after=mark)
    assert device.sim.setpoint_w() == 0  # idle while the clock is unknown


def test_a_reset_mid_contract_idles_the_inverter_until_the_clock_is_set(tmp_path):
    run(tmp_path, reset_mid_contract_without_ntp)


async def spoofed_later(fleet, server):
    device = await fleet.add()
    await device.start()
    server.offset_ms = 3600 * 1000  # a spoofer answers an hour ahead
    line = await device.wait_for("clock: refused NTP %s" % NTP, timeout=10)
    said = int(line.split("it says ")[1].split()[0])
    assert abs(said - 3600 * 1000) < 1000 and "ntp_max_step_ms 1000" in line, line
    # The clock stayed: the aggregator (on the host's true clock) still takes its frames.
    await trade(fleet, device)
    assert device.process.returncode is None


def test_a_far_off_ntp_answer_after_the_clock_is_set_is_refused(tmp_path):
    run(tmp_path, spoofed_later, ntp_resync_s=1)


# board_clock.read() and run() on CPython (the same module the VM runs), against the same
# server: what an answer must be to move the clock.


def ask(*mangles, offset_ms=0, servers=(NTP,), **settings):
    """Run board_clock.read() against the loopback server with each mangle in turn -> the
    results: (server, off ms) or the OSError's text."""

    async def main():
        server = await ntp_server.start(NTP, offset_ms=offset_ms)
        cfg = {"ntp_servers": list(servers), "ntp_timeout_ms": 300, **settings}
        found = []
        try:
            for mangle in mangles:
                server.mangle = mangle
                try:
                    found.append(await board_clock.read(board.Board(PROFILE), cfg))
                except OSError as exc:
                    found.append(str(exc))
        finally:
            server.transport.close()
        return found

    return asyncio.run(main())


PROFILE = {"name": "unix", "network": "loopback", "host_keeps_time": True}


def test_an_answer_moves_the_clock_only_when_it_is_a_synchronised_servers_to_us():
    def patch(offset, data):
        return lambda reply: reply[:offset] + data + reply[offset + len(data) :]

    def seconds(unix_s):
        return patch(40, struct.pack(">I", unix_s + ntp_server.NTP_DELTA_S))

    good, forged, unsynced, stratum0, client, old, short = ask(
        None,
        patch(24, bytes(8)),  # an origin that is not our request's: a blind spoofer's
        patch(0, bytes([0xE4])),  # leap 3: the server's own clock is not set
        patch(1, bytes([0])),  # stratum 0: a kiss-o'-death
        patch(0, bytes([0x23])),  # mode 3: a client's packet, not a server's answer
        seconds(946684800),  # 2000-01-01: before this firmware was written
        lambda reply: reply[:40],  # 40 bytes
        offset_ms=5000,
    )
    assert good[0] == NTP and abs(good[1] - 5000) < 200, good  # 5 s ahead of ours
    assert "no answer in 300 ms" in forged and "no answer in 300 ms" in short  # ignored
    assert "not a synchronised server (mode 4, leap 3" in unsynced, unsynced
    assert "stratum 0" in stratum0 and "mode 3" in client, (stratum0, client)
    assert "before 2026-01-01" in old, old


def test_the_servers_are_asked_in_turn():
    # The first does not exist (an address nothing answers on), the second answers.
    (found,) = ask(None, servers=("127.0.0.124", NTP))
    assert found[0] == NTP, found
    (failed,) = ask(None, servers=("127.0.0.124", "127.0.0.125:1234"))
    assert "[127.0.0.124: " in failed and "[127.0.0.125:1234: " in failed, failed


def test_a_resync_moves_a_set_clock_by_a_small_step_only():
    async def main():
        server = await ntp_server.start(NTP, offset_ms=400)
        cfg = {"ntp_servers": [NTP], "ntp_timeout_ms": 300, "ntp_max_step_ms": 1000}
        lines, before = [], board.OFFSET_MS
        clock = board.Board(PROFILE)
        try:
            await board_clock.run(clock, cfg, lines.append)  # one resync (app.py repeats it)
            moved = clock.now_ms() - int(time.time() * 1000)  # 400 ms is within the step
            server.offset_ms = 400 + 5000  # then a far answer
            await board_clock.run(clock, cfg, lines.append)
            kept = clock.now_ms() - int(time.time() * 1000)
        finally:
            server.transport.close()
            board.OFFSET_MS = before
        return moved, kept, lines

    moved, kept, lines = asyncio.run(main())
    assert 250 < moved < 550 and abs(kept - moved) < 150, (moved, kept)
    assert any("refused NTP" in line for line in lines), lines
