"""Attacks in which one party speaks for another, tried as an attacker would (#10, #13).

- A frame sniffed on its way to battery B, replayed at battery A (the batteries run the
  firmware on the MicroPython VM): A refuses it and answers nothing. Before, the frame's
  device id was not checked: it authenticated the attacker's session at A, and A's
  answers (BidAccepts meant for the aggregator) went to the attacker.
- Battery B, with only its own key, reporting battery A's contract as failed with 0 kWh
  (B is the attacker here, a script on a real socket; the hub is the real one): the
  hub's ledger keeps A's contract as it was. Before, the hub recorded the failure.
"""

import asyncio
import json
import os
import time

import pytest
from helpers.logs import into

from hub.config import hub_toml
from hub.service import Hub
from protocol import auth, contract, frame, message
from simulator.fleet import Fleet, free_port

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
    assert any("ignored a frame from 1 for device %d" % b.device_id in x for x in lines), lines
    assert any("never authenticated" in x for x in lines), lines


KEYS = {1: os.urandom(32), 1001: os.urandom(32), 1002: os.urandom(32)}
START = 1_800_000_000


def test_battery_b_cannot_report_battery_a_s_contract(tmp_path):
    (tmp_path / "hub-keys.json").touch(mode=0o600)
    (tmp_path / "hub-keys.json").write_text(json.dumps(
        {"keys": {str(k): v.hex() for k, v in KEYS.items()}, "group": os.urandom(32).hex()}
    ))  # fmt: skip
    settings = {"hub": {"store": "hub.sqlite", "slot_s": 60, "gate_s": 20},
                "aggregator": [{"key_id": 1, "name": "agg1"}]}  # fmt: skip
    cfg = hub_toml.check(settings, base=tmp_path)
    b = frame.Codec(auth.Keyring(KEYS), key_id=1002)  # battery B's key and what it holds
    ids = message.MessageIds(int(time.time() * 1000))
    failed, nothing = contract.TERM_CONTRACT_FAILURE, 0.0
    forgeries = [  # both answer A's BidConfirm (501); B signs both with its own key
        message.terminate(ids.next(), 1001, failed, delivered_kwh=nothing),  # "from A"
        message.terminate(ids.next(), 1002, failed, delivered_kwh=nothing),  # "about mine"
    ]

    async def scenario():
        logs = into([])
        hub = Hub(cfg)
        for device in (1001, 1002):
            hub.store.add_device(device, device, "127.0.0.1:%d" % device)
        deal = hub.ledger.accepted(1001, 1, 77, 18.0, 0.5, 5.0, START)
        hub.ledger.confirming(deal.contract_id, 501)

        async def battery_b(reader, writer):  # B's side of the hub's link to B
            writer.write(b"".join(b.seal(m, int(time.time() * 1000), reply_to=501)
                                  for m in forgeries))  # fmt: skip
            await writer.drain()
            await reader.read(4096)  # the agent's Query; then B stays connected

        port = free_port()
        server = await asyncio.start_server(battery_b, "127.0.0.1", port)
        try:
            hub.agents[1].link(1002, "127.0.0.1", port)
            deadline = time.monotonic() + 10
            while len([x for x in logs if "1002" in x]) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return hub.store.contract(deal.contract_id)["state"], logs
        finally:
            server.close()
            await hub.close()

    state, logs = asyncio.run(scenario())
    assert state == "Confirmed", "battery B moved battery A's contract"
    assert any("dropped a frame from key 1002 about device 1001" in x for x in logs), logs
    assert any("battery 1002 reported on contract" in x and "of battery 1001" in x
               for x in logs), logs  # fmt: skip
