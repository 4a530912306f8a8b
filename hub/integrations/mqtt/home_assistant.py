"""Home Assistant over MQTT: the discovery configs of each battery's entities, and the two
battery states no single hub event carries (is a contract running now, what has the
battery earned), which the MQTT bridge (bridge.py) publishes retained.

Entities per battery (unique id gridbid_<hub>_<device>_<key>; state topics under
<base> = <topic_prefix>/<hub>):

    key         entity         unit            from
    soc         sensor         %               device/<id>/telemetry
    power       sensor         kW              device/<id>/telemetry (discharge power)
    charged     sensor         kWh             device/<id>/telemetry  energy, total_increasing
    discharged  sensor         kWh             device/<id>/telemetry  energy, total_increasing
    price       sensor         <currency>/kWh  price (the signal; the market's is c/kWh)
    status      sensor (enum)  -               device/<id>/status
    earnings    sensor         <currency>      device/<id>/earnings   monetary, total
    contract    binary_sensor  -               device/<id>/contract   on: a contract runs
    contract_kw sensor         kW              device/<id>/contract   its contracted power

charged / discharged are the store's energy meters (hub/store/telemetry.py: what they
count and how exactly); they never go down, across restarts and the telemetry roll-up,
so the Energy dashboard takes them as a home battery. Earnings are monetary: Home
Assistant allows state_class total (not total_increasing) for them.

device/<id>/contract: {"in_contract": bool, "power_kw": kW (0 when none), "contracts":
[ids], "until": unix s or null}. A contract runs, as the hub knows it, from its start
while it is Confirmed or Active until its end or until it reaches a final state (a
battery that stops early ends it). The binary sensor reads in_contract and takes the
whole payload as attributes (json_attributes_topic), and contract_kw gives power_kw as a
number: an owner's automations (Home Assistant, evcc) read either.

device/<id>/earnings: {"earned": <currency>, "currency": ..., "contracts": final
contracts counted}: what the battery's final contracts pay by the settlement rule
(hub/integrations/settlement/records.py earned()), paid on chain yet or not.

Both are published when they change (the contract state is checked every TICK_S, the
earnings at each contract event) and again at each connect: one retained message per
battery and topic, whatever the broker's uptime.
"""

import json
import re

from hub.integrations.settlement import records

TICK_S = 1.0  # how often "in contract" is checked: a start or end shows within this
BINDING = ("Confirmed", "Active")  # states in which a contract drives the inverter
FINAL_STATES = records.FINAL_STATES  # states in which a contract pays (and has ended)

# key -> (component, name, state topic under <base>, template, extra config)
ENTITIES = {
    "soc": ("sensor", "State of charge", "device/%s/telemetry", "{{ value_json.soc }}",
            {"unit_of_measurement": "%", "device_class": "battery",
             "state_class": "measurement"}),
    "power": ("sensor", "Discharge power", "device/%s/telemetry",
              "{{ value_json.power_kw }}",
              {"unit_of_measurement": "kW", "device_class": "power",
               "state_class": "measurement"}),
    "charged": ("sensor", "Energy charged", "device/%s/telemetry",
                "{{ value_json.charged_kwh | round(4) }}",
                {"unit_of_measurement": "kWh", "device_class": "energy",
                 "state_class": "total_increasing", "suggested_display_precision": 3}),
    "discharged": ("sensor", "Energy discharged", "device/%s/telemetry",
                   "{{ value_json.discharged_kwh | round(4) }}",
                   {"unit_of_measurement": "kWh", "device_class": "energy",
                    "state_class": "total_increasing", "suggested_display_precision": 3}),
    # in currency/kWh, as Home Assistant's Energy dashboard takes a price (the market's
    # own unit is the cent: c/kWh)
    "price": ("sensor", "Price signal", "price", "{{ (value_json.price / 100) | round(5) }}",
              {"unit_of_measurement": "{currency}/kWh", "state_class": "measurement"}),
    "status": ("sensor", "Status", "device/%s/status",
               "{{ 'failure' if value_json.kind == 'failure' else 'online' }}",
               {"device_class": "enum", "options": ["online", "failure"]}),
    "earnings": ("sensor", "Earnings", "device/%s/earnings", "{{ value_json.earned }}",
                 {"unit_of_measurement": "{currency}", "device_class": "monetary",
                  "state_class": "total", "suggested_display_precision": 2}),
    "contract": ("binary_sensor", "In contract", "device/%s/contract",
                 "{{ 'ON' if value_json.in_contract else 'OFF' }}",
                 {"device_class": "running", "json_attributes_topic": "device/%s/contract"}),
    "contract_kw": ("sensor", "Contracted power", "device/%s/contract",
                    "{{ value_json.power_kw }}",
                    {"unit_of_measurement": "kW", "device_class": "power",
                     "state_class": "measurement"}),
}  # fmt: skip


def discovery(base, prefix, hub_name, device, currency="EUR", page=None):
    """[(topic, config)] of Home Assistant's entities for one battery. page: the hub's
    status page (the device's configuration_url), if it serves one."""
    node = "gridbid_%s_%s" % (re.sub(r"[^A-Za-z0-9_-]", "_", hub_name), device)
    about = {"identifiers": [node], "name": "Battery %s" % device, "manufacturer": "gridbid",
             "model": "BESS on hub %s" % hub_name, "sw_version": VERSION}  # fmt: skip
    if page:
        about["configuration_url"] = page

    def filled(text):  # a topic under <base> for this battery, or a unit in the currency
        return text.replace("%s", str(device)).replace("{currency}", currency)

    out = []
    for key, (component, name, state, template, extra) in ENTITIES.items():
        unique = "%s_%s" % (node, key)
        config = {
            "name": name, "unique_id": unique,
            "default_entity_id": "%s.%s" % (component, unique),  # object_id's successor
            "state_topic": "%s/%s" % (base, filled(state)),
            "value_template": template, "availability_topic": base + "/status",
            "device": about, "origin": {"name": "gridbid", "sw_version": VERSION},
        }  # fmt: skip
        for k, v in extra.items():
            if k == "json_attributes_topic":
                config[k] = "%s/%s" % (base, filled(v))
            else:
                config[k] = filled(v) if isinstance(v, str) else v
        out.append(("%s/%s/%s/config" % (prefix, component, unique), config))
    return out


class States:
    """device/<id>/contract and device/<id>/earnings, each published when it changes.
    Only the hub's event loop calls it (the bridge, while it is online)."""

    def __init__(self, store, base, currency, publish):
        self.store, self.base, self.currency = store, base, currency
        self.publish = publish  # publish(topic, payload): retained, QoS as set
        self.sent = {}  # topic -> the payload last published there
        self.shown = {}  # device -> the ids of the contracts its last contract state lists
        self.running = set()  # devices last said to be in contract

    def resend(self, devices, now):
        """After a connect: every battery's states, published again."""
        self.sent.clear()
        self.shown.clear()
        self.running.clear()
        for device in devices:
            self.earnings(device)
        self.tick(now, devices)

    def tick(self, now, devices=()):
        """Publish "in contract" for every battery whose contracts started or ended (and
        for `devices`, whatever their state): one query for all."""
        live = self._running(now)
        for device in set(devices) | self.running | live.keys():
            self._contract(device, live.get(device, []))
        self.running = set(live)

    def ended(self, device, now):
        """A contract of this battery reached a final state: its earnings, and whether a
        contract still runs (one that ends early shows now, not at the next tick)."""
        self.earnings(device)
        rows = self._running(now, device).get(device, [])
        self._contract(device, rows)
        self.running.discard(device)
        if rows:  # another of its contracts runs on
            self.running.add(device)

    def _running(self, now, device=None):
        """{device: [(contract id, watts, start, duration s)]} of the contracts running at
        `now`, in id order."""
        live, mine = {}, "" if device is None else " AND device = ?"
        for device_id, *row in self.store.db.execute(
            "SELECT device, id, avg_watts, start, duration_s FROM contracts WHERE state IN "
            "(?, ?) AND start <= ? AND start + duration_s > ?%s ORDER BY id" % mine,
            BINDING + (now, now) + (() if device is None else (device,)),
        ):  # fmt: skip
            live.setdefault(device_id, []).append(row)
        return live

    def _contract(self, device, rows):
        ids = [r[0] for r in rows]
        if self.shown.get(device) == ids:  # the same contracts: nothing to say (the tick's
            return  # common case, without building the payload)
        self.shown[device] = ids
        self._send("contract", device, {
            "in_contract": bool(rows),
            "power_kw": round(sum(abs(watts) for _i, watts, _s, _d in rows) / 1000, 6),
            "contracts": ids,
            "until": max((start + length for _i, _w, start, length in rows), default=None),
        })  # fmt: skip

    def earnings(self, device):
        cents, count = records.earned(self.store, device)
        self._send("earnings", device, {"earned": round(cents / 100, 6),
                                        "currency": self.currency, "contracts": count})  # fmt: skip

    def _send(self, kind, device, state):
        topic = "%s/device/%s/%s" % (self.base, device, kind)
        payload = json.dumps(state, separators=(",", ":"))
        if self.sent.get(topic) != payload:
            self.sent[topic] = payload
            self.publish(topic, payload)


def _version():
    from importlib import metadata

    try:
        return metadata.version("gridbid")
    except metadata.PackageNotFoundError:  # a checkout run without installing it
        return "unknown"


VERSION = _version()
