"""The firmware app with CoAP on (config coap_hub): a battery on the MicroPython VM
boots, takes its clock from the hub's /time, trades a slot over ETP, and reconciles its
contract book with the hub's /contracts: both sides hold the same contract."""

import asyncio
import json
import re
import socket

import pytest
import store as firmware_store  # firmware/store.py (conftest puts firmware/ on the path)
from helpers.hub_site import GATE_S, SLOT_S, deploy, hub_settings
from helpers.logs import into

from hub.config import hub_toml
from hub.service import Hub
from simulator.fleet import Fleet, free_port

CPYTHON_ONLY = "a hub and batteries on the VM as subprocesses"

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
        hub = Hub(hub_toml.check(settings, base=tmp_path))
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
        assert not any("no record" in x for x in device.lines), device.lines[-20:]
        # Before the hub records a contract (its buyer's report, a moment after the
        # battery's accept) a reconcile may find it missing there; once both agree, never.
        since = next(i for i, m in enumerate(found) if m and int(m[2]) >= len(ids))
        late = [x for x in device.lines[since:] if "not in the hub's list" in x]
        assert not late, device.lines[-20:]
        assert "Traceback" not in "\n".join(device.lines)
    finally:
        if hub is not None:
            await hub.close()
        await fleet.close()


def test_a_governed_slot_length_reaches_a_coap_battery_and_only_it_trades_past_it(tmp_path):
    """Governance sets slot_s (a control, as hub/integrations/platform/gov.py records it): the hub
    schedules it at a boundary both lengths share; the battery with CoAP hears the grid
    on /price, saves it, and trades the new slots with the same terms as the hub; the
    battery without CoAP cannot know it and is not traded from then."""
    asyncio.run(_governed_slot_length(tmp_path))


async def _governed_slot_length(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    fleet = Fleet(tmp_path / "fleet", aggregators=(1, 2), slot_s=SLOT_S, gate_s=GATE_S,
                  slots_ahead=1, poll_ms=100, tick_ms=100, success_share=0.9)  # fmt: skip
    hub, logs = None, []
    try:
        told = await fleet.add(coap_hub="127.0.0.1:%d" % port, coap_reconcile_s=1)
        deaf = await fleet.add()
        deploy(fleet, tmp_path)
        settings = hub_settings(fleet)
        settings["coap"] = {"bind": "127.0.0.1", "port": port}
        into(logs)
        hub = Hub(hub_toml.check(settings, base=tmp_path))
        hub.store.set_control("market.slot_s", 2 * SLOT_S, "governance:p1")
        await hub.start_integrations()
        await told.start()
        await deaf.start()
        await told.wait_for("coap: clock set from the hub", timeout=15)
        summaries = await hub.run(1)  # its first slot schedules the change
        before, at, after = hub.grid.value
        assert (before, after) == (SLOT_S, 2 * SLOT_S) and at % after == 0, logs
        line = await told.wait_for("coap: slot grid from the hub", timeout=15)
        assert line.endswith("%d s slots until %d, %d s from then" % (SLOT_S, at, after))
        saved = told.data_dir / "grid.rec"
        while summaries[-1]["start"] < at + after:  # two slots of the new length
            summaries.append(await hub.trade_slot())
        new = [s for s in summaries if s["start"] >= at]
        assert all(s["slot"].startswith("rt%dsgate%ds." % (after, GATE_S)) for s in new)
        rows = [r for r in hub.store.contracts(limit=500) if r["start"] >= at]
        assert rows and {r["device"] for r in rows} == {told.device_id}, rows
        assert all(r["duration_s"] <= after for r in rows)
        assert any("battery %d is not known to have the new slot grid" % deaf.device_id in x
                   for x in logs)  # fmt: skip
        # the battery's own record of each new contract: the hub's slot name
        for row in rows:
            await told.wait_for("contract %s with aggregator" % row["id"], timeout=5)
        mine = [x for x in told.lines if x.startswith("contract ") and " with aggregator " in x]
        assert any(x.endswith("rt%dsgate%ds.hub.%d" % (after, GATE_S, r["start"]))
                   for x in mine for r in rows)  # fmt: skip
        assert not any("our terms" in x for x in told.lines)  # reconcile: same terms
        with open(saved, "rb") as f:  # kept for a restart (firmware/store.py: header, JSON)
            assert json.loads(firmware_store.decode(f.read())) == [before, at, after]
        # A power cut: the battery restarts with the hub's CoAP gone, so only what it
        # saved can tell it the grid. It still sells the new slots, with the hub's terms.
        await hub.integrations.pop("coap").close()
        await told.kill()
        mark = len(told.lines)
        await told.start()
        made = []
        for _ in range(4):
            summary = await hub.trade_slot()
            made += [cid for cid, state in summary["contracts"].values() if state == "Confirmed"]
            if made:
                break
        assert made, told.lines[mark:]
        for cid in made:
            line = await told.wait_for("contract %s with aggregator" % cid, after=mark)
            assert line.split(": ")[-1].startswith("rt%dsgate%ds." % (after, GATE_S)), line
        assert "Traceback" not in "\n".join(told.lines + deaf.lines)
    finally:
        if hub is not None:
            await hub.close()
        await fleet.close()
