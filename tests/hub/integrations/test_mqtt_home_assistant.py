"""Home Assistant's entities (hub/integrations/mqtt/home_assistant.py) against a real
mosquitto, from real Hub objects (real store, ledger and events): the kWh meters, the
earnings and "in contract", and every discovery config the bridge publishes, checked
against Home Assistant's documented keys and rendered with Jinja2 (the template engine
Home Assistant runs) against the payloads of their state topics.

The broker, hub config and checks are test_mqtt_bridge.py's (imported, not copied)."""

import asyncio
import json
import time
from types import SimpleNamespace

import jinja2
import test_mqtt_bridge as base
from helpers.mqtt_broker import Subscriber
from helpers.waiting import until_async

from hub.integrations.mqtt.home_assistant import ENTITIES
from hub.store import telemetry
from protocol import contract, message

pytestmark = base.pytestmark
broker, certs = base.broker, base.certs  # the fixtures
DEVICE = base.DEVICE
TOPIC = "gridbid/hub1/device/%d/" % DEVICE


def status_frame(hub, remaining_kwh, kw, capacity_kwh=10.0):
    """A battery's BESS_STATUS as the hub's transport hands it over (sealed and checked)."""
    msg = message.bess_status(hub.ids.next(), DEVICE, capacity_kwh, remaining_kwh,
                              100.0 * remaining_kwh / capacity_kwh, 0, 51.2, kw)  # fmt: skip
    hub.on_frame(SimpleNamespace(message=msg, reply_to=None), ("127.0.0.21", 5000))


def joined(hub):
    base.add_battery(hub)
    hub.known.add(DEVICE)
    hub.events.emit("device", device=DEVICE, address="127.0.0.21")


def payloads(sub, topic):
    return [json.loads(p) for t, p, _r in list(sub.messages) if t == topic]


async def published(sub, topic, count, what):
    # 10 s: a contract may start 5 s ahead, and the state is checked once a second
    await until_async(lambda: len(payloads(sub, topic)) >= count, 10, what)
    return payloads(sub, topic)[count - 1]


def test_kwh_meters_rise_and_survive_a_restart_and_the_roll_up(broker, tmp_path):
    """A battery discharges at 3.6 kW (1 Wh a second) and charges; the hub restarts on
    the same store, and the telemetry is rolled up and trimmed: the counters the Energy
    dashboard reads only ever go up, and by what the readings say."""
    broker.start()
    logs = []
    sub = Subscriber(broker)
    cfg = base.hub_config_with(tmp_path, base.settings_for(broker, tmp_path))
    meters = TOPIC + "telemetry"

    async def scenario():
        hub, bridge = await base.started(cfg, logs)
        joined(hub)
        for remaining in (8.0, 7.999, 7.998, 7.997):
            status_frame(hub, remaining, 3.6)
            await asyncio.sleep(0.2)
        first = [await published(sub, meters, i + 1, "reading %d" % i) for i in range(4)]
        await until_async(lambda: base.drained(bridge), 5, "sent")
        await hub.close()

        hub, bridge = await base.started(cfg, logs)  # a restart: the same store file
        hub.known.add(DEVICE)
        telemetry.roll_up(hub.store, time.time() + 7200, raw_s=0, minute_s=0)
        telemetry.trim(hub.store)
        raw = hub.store.db.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        await asyncio.sleep(0.2)
        status_frame(hub, 8.5, 0.0)  # charged 0.503 kWh since the last reading
        after = await published(sub, meters, 5, "the reading after the restart")
        await until_async(lambda: base.drained(bridge), 5, "sent")
        await hub.close()
        return first, after, raw

    first, after, raw = asyncio.run(scenario())
    assert raw == 0  # every reading was rolled up and trimmed
    readings = first + [after]
    discharged = [m["discharged_kwh"] for m in readings]
    assert discharged == sorted(discharged) and discharged[0] == 0.0
    # 3.6 kW is 1 Wh a second, held from each reading to the next, across the restart
    # too (the hold is under 15 min): it went on from where it was, nothing reset or lost
    # (the events' "at" is a few µs after the reading's own time: 20 ms of slack)
    for a, b in zip(readings, readings[1:]):
        assert abs(b["discharged_kwh"] - a["discharged_kwh"] - (b["at"] - a["at"]) / 1000) < 2e-5
    assert after["discharged_kwh"] - discharged[3] > 0.0002  # the restart took > 0.2 s
    assert [m["charged_kwh"] for m in first] == [0.0] * 4
    assert abs(after["charged_kwh"] - (8.5 - 7.997)) < 1e-9
    assert not [x for x in logs if "refused" in x], logs
    sub.close()
    base.no_secret(logs, broker)


def test_in_contract_and_earnings_follow_a_contract_that_completes(broker, tmp_path):
    """Two buyers' confirmed contracts run 2 s of a 4 s slot at 1,800 kW each (1 kWh) at
    20 c/kWh. "In contract" turns on at their start (3,600 kW); the battery stops one
    early (0.2 kWh metered: 1,800 kW left at once), completes the other (0.9 kWh) and is
    off at its end; the earnings go 0 -> 0.04 -> 0.22 EUR. Every discovery config renders
    against its topic."""
    broker.start()
    logs = []
    sub = Subscriber(broker, ("gridbid/#", "homeassistant/#"), user="homeassistant")
    settings = base.settings_for(broker, tmp_path)
    cfg = base.hub_config_with(tmp_path, settings, slot_s=4, gate_s=2,
                               answer_s=0.5, bind_timeout_s=0.8)  # fmt: skip
    state, earnings = TOPIC + "contract", TOPIC + "earnings"

    async def scenario():
        hub, bridge = await base.started(cfg, logs)
        await until_async(lambda: bridge.online, 5, "connected")
        joined(hub)
        status_frame(hub, 8.0, 0.0)
        hub.events.emit("price", slot=base.SLOT, price=20.0, demand=1.0, supply=1.0)
        idle = await published(sub, state, 1, "the battery's first state")
        start = (int(time.time()) + 5) // 4 * 4  # a slot's start, 1 to 5 s ahead
        deal = hub.ledger.accepted(DEVICE, 1, 77, 20.0, 1.0, 1800.0, start)
        hub.ledger.confirming(deal.contract_id, 555)
        other = hub.ledger.accepted(DEVICE, 2, 78, 20.0, 1.0, 1800.0, start)  # another buyer
        hub.ledger.confirming(other.contract_id, 556)
        running = await published(sub, state, 2, "in contract at its start")
        at_start = time.time() - start
        stopped = contract.OUTCOME_CODES[contract.TERMINATED_BY_SCADA]  # the battery stops one
        assert hub.ledger.reported(DEVICE, None, 556, stopped, 0.2) is not None
        one = await published(sub, state, 3, "one contract left")
        ended = await published(sub, state, 4, "out of contract at its end")
        at_end = time.time() - start
        success = contract.OUTCOME_CODES[contract.COMPLETED_SUCCESS]
        assert hub.ledger.reported(DEVICE, None, 555, success, 0.9) is not None
        paid = await published(sub, earnings, 3, "the earnings")
        await asyncio.sleep(0.3)
        later = Subscriber(broker, ("gridbid/#", "homeassistant/#"), user="homeassistant")
        await asyncio.sleep(0.3)  # retained messages come right after the SUBACK
        retained = {t: p for t, p, r in later.messages if r}
        later.close()
        await hub.close()
        return idle, running, one, ended, paid, (at_start, at_end), retained, (deal, other)

    idle, running, one, ended, paid, times, retained, deals = asyncio.run(scenario())
    (at_start, at_end), (deal, other) = times, deals
    off = {"in_contract": False, "power_kw": 0.0, "contracts": [], "until": None}
    assert idle == off and ended == off
    until = deal.start_unix_s + 2
    assert running == {"in_contract": True, "power_kw": 3600.0,
                       "contracts": sorted([deal.contract_id, other.contract_id]),
                       "until": until}  # fmt: skip
    assert one == {"in_contract": True, "power_kw": 1800.0, "contracts": [deal.contract_id],
                   "until": until}  # fmt: skip
    assert -0.1 < at_start < 1.9 and 2 - 0.1 < at_end < 5, (at_start, at_end)  # ticks: 1 s
    assert [p["earned"] for p in payloads(sub, earnings)] == [0.0, 0.04, 0.22]  # 0.2, 0.9 kWh
    assert paid == {"earned": 0.22, "currency": "EUR", "contracts": 2}
    # one retained message per state topic, and nothing published again unchanged
    assert len(payloads(sub, state)) == 4 and len(payloads(sub, earnings)) == 3
    rendered = every_config_rendered(retained)
    assert rendered["binary_sensor.gridbid_hub1_%d_contract" % DEVICE] == ("OFF", off)
    assert rendered["sensor.gridbid_hub1_%d_earnings" % DEVICE][0] == "0.22"
    assert rendered["sensor.gridbid_hub1_%d_contract_kw" % DEVICE][0] == "0.0"
    assert rendered["sensor.gridbid_hub1_%d_price" % DEVICE][0] in ("0.2", "0.20")
    assert not [x for x in logs if "refused" in x], logs
    sub.close()
    base.no_secret(logs, broker)


def every_config_rendered(retained):
    """{entity id: (its state, its attributes)}: each discovery config checked against
    Home Assistant's keys, its value_template rendered against its state topic's
    retained payload (as Home Assistant would), its attributes topic read as JSON."""
    out = {}
    configs = {t: json.loads(p) for t, p in retained.items() if t.startswith("homeassistant/")}
    assert len(configs) == len(ENTITIES), sorted(configs)  # every entity, each once
    for topic, config in configs.items():
        base.valid_config(topic, config)
        value_json = json.loads(retained[config["state_topic"]])
        state = jinja2.Template(config["value_template"]).render(value_json=value_json)
        attributes = config.get("json_attributes_topic")
        out[config["default_entity_id"]] = (state, attributes and json.loads(retained[attributes]))
    return out
