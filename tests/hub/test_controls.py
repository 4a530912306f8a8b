"""Operators' controls (hub/controls.py) on a real Hub and its SQLite store: what an
operator sets is checked, kept with its history and told as an event; what governance
records from another process (market.<param>) reaches the price signal at the next slot."""

import json

import pytest
from helpers.hub_site import write_keys
from helpers.logs import said

from hub import controls
from hub.config import hub_toml
from hub.service import Hub
from hub.store import Store


@pytest.fixture
def hub(tmp_path):
    write_keys(tmp_path / "hub-keys.json", [1])
    settings = {"hub": {"store": "hub.sqlite", "slot_s": 60, "gate_s": 20},
                "aggregator": [{"key_id": 1, "name": "value"}]}  # fmt: skip
    cfg = hub_toml.check(settings, base=tmp_path)
    events = []
    with said() as logs:
        hub = Hub(cfg)
        hub.events.subscribe(events.append)
        hub.logs, hub.told = logs, events
        yield hub
        hub.store.close()


def test_a_control_is_checked_kept_and_told(hub):
    hub.set_control("paused.value", True, "web")
    assert hub.controls.values == {"paused.value": True}
    assert [(e["name"], e["value"], e["by"]) for e in hub.told] == [("paused.value", True, "web")]
    for name, value, fault in [
        ("paused.nobody", True, "no aggregator"),
        ("paused.value", "yes", "true or false"),
        ("reserve_floor.77", 15.0, "no battery"),
        ("voltage.1", 1, "unknown control"),
    ]:
        with pytest.raises(ValueError, match=fault):
            hub.set_control(name, value, "mqtt")
    assert hub.store.controls() == {"paused.value": True}  # nothing bad was kept
    hub.set_control("paused.value", None, "web")
    assert hub.store.controls() == {}


def test_governance_sets_the_price_signal_from_the_next_slot(hub, tmp_path):
    assert hub.market.signal.p_con == 6.0
    with Store(tmp_path / "hub.sqlite") as other:  # as `gridbid gov` does, from its process
        other.set_control("market.p_con", 3.5, "governance:p1")
        other.set_control("market.k", 2.0, "governance:p2")
    hub.follow_controls()
    assert (hub.market.signal.p_con, hub.market.signal.k) == (3.5, 2.0)
    assert hub.market.signal.price(10, 1) == pytest.approx(16.0 + 3.5 * 0.9, abs=0.5)
    hub.follow_controls()
    told = [x for x in hub.logs if x.startswith("market:")]
    assert len(told) == 2, told  # each said once


def test_a_governed_slot_length_is_scheduled_at_a_shared_boundary_and_kept(hub, tmp_path):
    assert hub.grid.value == (60, 0, 60)
    now = 1_800_000_030
    with Store(tmp_path / "hub.sqlite") as other:
        other.set_control("market.slot_s", 900, "governance:p3")
    hub.follow_controls(now)
    before, at, after = hub.grid.value
    assert (before, after) == (60, 900) and at % 900 == 0 and now + 120 <= at < now + 120 + 900
    assert hub.ledger.grid is hub.grid and hub.market.grid is hub.grid  # one owner
    assert hub.market.open_slot(at - 100) == "rt60sgate20s.hub.%d" % (at - 60)  # the last
    assert hub.market.open_slot(at - 30) == "rt900sgate20s.hub.%d" % at  # the first 900 s
    assert hub.store.controls()[controls.GRID] == [60, at, 900]
    assert [e["name"] for e in hub.told if e["kind"] == "control"] == [controls.GRID]
    hub.follow_controls(now + 30)  # scheduled once: the same grid, nothing said again
    assert hub.grid.value == (60, at, 900) and sum("slot_s" in x for x in hub.logs) == 1
    # a battery that never heard the grid is traded before the change, not after it
    configs = hub._battery_configs
    assert not hub.grid.off_grid(at - 60, [7], configs) and hub.grid.off_grid(at, [7], configs) == {
        7
    }
    assert hub.grid.off_grid(at + 900, [7], configs) == {7}
    assert sum("battery 7 is not known" in x for x in hub.logs) == 1  # told once
    hub.grid.heard(7)  # it observed /price (hub/integrations/coap.py)
    assert not hub.grid.off_grid(at, [7], configs)
    # one provisioned with the new length (battery-<id>.json, gridbid hub keys) is traded
    (tmp_path / "battery-8.json").write_text(json.dumps({"device_id": 8, "slot_s": 900}))
    assert not hub.grid.off_grid(at, [8], configs)
    # a restarted hub keeps the schedule, whatever hub.toml says
    again = Hub(hub.cfg)
    assert again.grid.value == (60, at, 900) and again.ledger.grid is again.grid
    again.store.close()


def test_a_slot_length_that_leaves_no_time_before_the_gate_is_refused(hub, tmp_path):
    hub.store.set_control("market.slot_s", 20, "governance:p4")  # gate_s is 20
    hub.follow_controls(1_800_000_000)
    assert hub.grid.value == (60, 0, 60)
    assert any("slot_s = 20: it leaves no time" in x for x in hub.logs), hub.logs
