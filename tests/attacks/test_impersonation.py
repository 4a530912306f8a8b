"""Attacks in which one party speaks for another, tried as an attacker would (#10, #13).

- Battery A's config.json, read out of its flash, used to forge aggregator 1's Bid and
  BidConfirm to battery B: B refuses them (they fail their tag: A's key with aggregator
  1 is not B's) and answers nothing. Before pair keys every battery held every
  aggregator's key, and B took the forgeries as aggregator 1's.
- A frame sniffed on its way to battery B, replayed at battery A (the batteries run the
  firmware on the MicroPython VM): A refuses it and answers nothing. Before, the frame's
  device id was not checked: it authenticated the attacker's session at A, and A's
  answers (BidAccepts meant for the aggregator) went to the attacker. Now it fails its
  tag (the pair key is B's), and A's check of the device id stands behind that.
- Battery B, with every key it holds, reporting battery A's contract as failed with
  0 kWh (B is the attacker here, a script on real sockets; the hub is the real one):
  the hub's ledger keeps A's contract as it was, and takes A's own receipt. Before,
  the hub recorded the failure.
"""

import asyncio
import json
import random
import time

import pytest
from helpers.hub_site import write_keys
from helpers.logs import into

from hub.config import hub_toml
from hub.service import Hub
from protocol import auth, contract, frame, message
from simulator.fleet import Fleet, free_group_port, free_port
from transport.discovery import group_socket

pytestmark = pytest.mark.timeout(120)


def test_a_frame_for_battery_b_replayed_at_battery_a_gets_nothing(tmp_path):
    async def scenario():
        fleet = Fleet(tmp_path, aggregators=(1,), auth_ms=1500)
        try:
            a, b = await fleet.add(), await fleet.add()
            await asyncio.gather(a.start(), b.start())
            agg = await fleet.aggregator(1)
            link = await agg.connect(b.address, fleet.tcp_port, b.device_id)
            offer = await link.query()
            bid = await link.bid(b.device_id, offer.sale_price + 1.0, offer.energy_total)
            answer, _at = await link.answer(bid)
            assert answer.message.device_id == b.device_id  # B dealt with it
            sniffed = list(link.sent)  # the Query and the Bid, as they went to B

            # The attacker holds no key: it replays B's frames at A, at once (fresh).
            reader, writer = await asyncio.open_connection(a.address, fleet.tcp_port)
            mark = len(a.lines)
            writer.write(b"".join(sniffed))
            await writer.drain()
            said = await asyncio.wait_for(reader.read(4096), 5)  # A closes: auth_ms
            writer.close()
            return a, b, said, a.lines[mark:]
        finally:
            await fleet.close()

    a, b, said, lines = asyncio.run(scenario())
    assert said == b"", "battery A answered frames meant for battery B"
    # sealed with aggregator 1's pair key with B, the frames fail their tag at A
    assert any("BadTag: bad tag from sender 1" in x for x in lines), lines
    assert any("never authenticated" in x for x in lines), lines


def test_battery_a_s_config_cannot_forge_aggregator_1_to_battery_b(tmp_path):
    async def scenario():
        fleet = Fleet(tmp_path, aggregators=(1,), auth_ms=1500)
        try:
            a, b = await fleet.add(), await fleet.add()
            await asyncio.gather(a.start(), b.start())
            stolen = json.loads(a.config_path.read_text())  # A's flash, read out
            forger = frame.Codec(auth.Keyring.from_json(stolen), key_id=1)  # "aggregator 1"
            ids = message.MessageIds(int(time.time() * 1000))
            now = int(time.time() * 1000)
            forged = [
                message.query(ids.next(), b.device_id),
                message.bid(ids.next(), b.device_id, 99.0, 0.5),
                message.bid_confirm(ids.next(), b.device_id, 99.0, 0.5, 5.0),
            ]
            reader, writer = await asyncio.open_connection(b.address, fleet.tcp_port)
            mark = len(b.lines)
            # A holds only its pair key with aggregator 1: the one it can seal with
            writer.write(b"".join(forger.seal(m, now, to=1) for m in forged))
            await writer.drain()
            said = await asyncio.wait_for(reader.read(4096), 5)  # B closes: auth_ms
            writer.close()
            lines = b.lines[mark:]
            # the real aggregator 1 still trades with B
            link = await (await fleet.aggregator(1)).connect(b.address, fleet.tcp_port,
                                                              b.device_id)  # fmt: skip
            offer = await link.query()
            return said, lines, offer
        finally:
            await fleet.close()

    said, lines, offer = asyncio.run(scenario())
    assert said == b"", "battery B answered frames forged with battery A's key"
    # three forged frames, one line: refusals are counted and said once per 10 s
    assert any(x.startswith("refused ") and "BadTag" in x for x in lines), lines
    assert not any("bid " in x or "contract" in x for x in lines), lines
    assert any("never authenticated" in x for x in lines), lines
    assert offer.device_id != 0  # B answered its real aggregator


START = 1_800_000_000


def test_battery_b_cannot_report_battery_a_s_contract(tmp_path):
    """The hub takes a contract's outcome from its battery's receipt, sealed with that
    battery's pair key with the hub, on the group's address (real UDP). Battery B, with
    every key it holds, tries to fail battery A's contract with 0 kWh: nothing moves.
    Then A's own receipt moves it (the path works)."""
    write_keys(tmp_path / "hub-keys.json", [1])
    group_addr, group_port = "239.255.71.%d" % random.randint(2, 250), free_group_port()
    settings = {"hub": {"store": "hub.sqlite", "slot_s": 60, "gate_s": 20,
                        "group_addr": group_addr, "group_port": group_port,
                        "interface": "127.0.0.1"},
                "aggregator": [{"key_id": 1, "name": "agg1"}]}  # fmt: skip
    cfg = hub_toml.check(settings, base=tmp_path)
    hub_keys = cfg["keys"]
    # B holds its pair key with aggregator 1 (enrollment) and its own key with the hub
    b_to_agg = frame.Codec(auth.Keyring({1: cfg["aggregators"][0]["identity"].pair_key(1002)}),
                           key_id=1002, peer=1)  # fmt: skip
    b_to_hub = frame.Codec(auth.Keyring({0: hub_keys.etp_key(1002)}), key_id=1002, peer=0)
    b_as_a = frame.Codec(auth.Keyring({0: hub_keys.etp_key(1002)}), key_id=1001, peer=0)
    a_to_hub = frame.Codec(auth.Keyring({0: hub_keys.etp_key(1001)}), key_id=1001, peer=0)
    ids = message.MessageIds(int(time.time() * 1000))
    failed = contract.TERM_CONTRACT_FAILURE

    def outcome(device):
        return message.terminate(ids.next(), device, failed, delivered_kwh=0.0)

    async def scenario():
        logs = into([])
        hub = Hub(cfg)
        for device in (1001, 1002):
            hub.store.add_device(device, device, "127.0.0.1:%d" % device)
        deal = hub.ledger.accepted(1001, 1, 77, 18.0, 0.5, 5.0, START)
        hub.ledger.confirming(deal.contract_id, 501)
        await hub.discovery.start()
        sender = group_socket(group_addr, group_port)
        now = int(time.time() * 1000)
        try:
            for codec, about in (
                (b_to_hub, 1001),  # "A's", sealed with B's key
                (b_to_hub, 1002),  # about B, answering A's confirm
                (b_as_a, 1001),
            ):  # naming A, B's key: the tag fails
                sender.sendto(codec.seal(outcome(about), now, 501), (group_addr, group_port))

            # and on the hosted aggregator's link to B, B reports on A's contract
            async def battery_b(reader, writer):
                writer.write(b_to_agg.seal(outcome(1001), int(time.time() * 1000), 501))
                await writer.drain()
                await reader.read(4096)

            port = free_port()
            server = await asyncio.start_server(battery_b, "127.0.0.1", port)
            hub.traders[1].link(1002, "127.0.0.1", port)
            deadline = time.monotonic() + 5
            while not any("dropped a frame" in x for x in logs) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the datagrams, had any counted
            forged = hub.store.contract(deal.contract_id)["state"]
            sender.sendto(a_to_hub.seal(outcome(1001), int(time.time() * 1000), 501),
                          (group_addr, group_port))  # fmt: skip
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                genuine = hub.store.contract(deal.contract_id)["state"]
                if genuine != "Confirmed":
                    break
                await asyncio.sleep(0.05)
            server.close()
            return forged, genuine, logs
        finally:
            sender.close()
            await hub.close()

    forged, genuine, logs = asyncio.run(scenario())
    assert forged == "Confirmed", "battery B moved battery A's contract"
    assert genuine == "CompletedFailureByScada", "A's own receipt did not count"
    assert any("dropped a frame from key 1002 about device 1001" in x for x in logs), logs
