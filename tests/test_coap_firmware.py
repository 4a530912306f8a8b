"""The firmware app with CoAP on (config coap_hub): a battery on the MicroPython VM
boots, takes its clock from the hub's /time, trades a slot over ETP, and reconciles its
contract book with the hub's /contracts: both sides hold the same contract."""

import asyncio
import re
import socket

import pytest
from test_hub_service import GATE_S, SLOT_S, deploy, hub_settings

from hub import hub_config
from hub.fleet import Fleet, free_port
from hub.service import Hub

pytestmark = pytest.mark.timeout(90)
RECONCILED = re.compile(r"coap: reconciled (\d+) contracts with the hub: (\d+) agree")


def test_a_battery_with_coap_reconciles_the_contract_it_traded(tmp_path):
    asyncio.run(_trade_and_reconcile(tmp_path))


async def _trade_and_reconcile(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    fleet = Fleet(tmp_path / "fleet", aggregators=(1, 2), slot_s=SLOT_S, gate_s=GATE_S,
                  slots_ahead=1, poll_ms=100, tick_ms=100, success_share=0.9)  # fmt: skip
    hub = None
    try:
        device = await fleet.add(coap_hub="127.0.0.1:%d" % port, coap_reconcile_s=1)
        deploy(fleet, tmp_path)
        settings = hub_settings(fleet)
        settings["coap"] = {"bind": "127.0.0.1", "port": port}
        hub = Hub(hub_config.check(settings, base=tmp_path), log=lambda text: None)
        await hub.start_integrations()  # CoAP up before the battery asks for the time
        await device.start()
        await device.wait_for("coap: clock set from the hub", timeout=15)
        (summary,) = await hub.run(1)
        ids = [cid for cid, state in summary["contracts"].values() if state == "Confirmed"]
        assert ids, summary
        line = await device.wait_for("coap: reconciled", timeout=15, after=len(device.lines))
        for _ in range(30):  # the next reconcile after the contract (every second)
            found = [RECONCILED.search(x) for x in device.lines]
            if any(m and int(m[2]) >= len(ids) for m in found):
                break
            await asyncio.sleep(0.5)
        agreed = max(int(m[2]) for m in found if m)
        assert agreed >= len(ids), (line, device.lines[-20:])
        assert not any("not in the hub's list" in x or "no record" in x for x in device.lines)
        assert "Traceback" not in "\n".join(device.lines)
    finally:
        if hub is not None:
            await hub.close()
        await fleet.close()
