"""Operators' controls (hub/controls.py) on a real Hub and its SQLite store: what an
operator sets is checked, kept with its history and told as an event; what governance
records from another process (market.<param>) reaches the price signal at the next slot."""

import json
import os

import pytest

from hub import hub_config
from hub.service import Hub
from hub.store import Store


@pytest.fixture
def hub(tmp_path):
    keys = tmp_path / "hub-keys.json"
    keys.touch(mode=0o600)
    keys.write_text(json.dumps({"keys": {"1": os.urandom(32).hex()},
                                "group": os.urandom(32).hex()}))  # fmt: skip
    settings = {"hub": {"store": "hub.sqlite", "slot_s": 60, "gate_s": 20},
                "aggregator": [{"key_id": 1, "name": "value"}]}  # fmt: skip
    cfg = hub_config.check(settings, base=tmp_path)
    logs, events = [], []
    hub = Hub(cfg, log=logs.append)
    hub.events.subscribe(events.append)
    hub.logs, hub.told = logs, events
    yield hub
    hub.store.close()


def test_a_control_is_checked_kept_and_told(hub):
    hub.set_control("paused.value", True, "web")
    assert hub.controls == {"paused.value": True}
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
        other.set_control("market.slot_s", 900, "governance:p3")
    hub.follow_controls()
    assert (hub.market.signal.p_con, hub.market.signal.k) == (3.5, 2.0)
    assert hub.market.signal.price(10, 1) == pytest.approx(16.0 + 3.5 * 0.9, abs=0.5)
    assert hub.cfg["slot_s"] == 60  # the slot grid changes only with the batteries' configs
    hub.follow_controls()
    told = [x for x in hub.logs if x.startswith("market:")]
    assert len(told) == 3 and sum("slot_s" in x for x in told) == 1, told  # each said once
