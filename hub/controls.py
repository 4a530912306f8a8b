"""Operators' controls: settings an operator changes while the hub runs (MQTT commands,
the web page) and market parameters a passed governance proposal sets (hub/platform/gov.py
writes them from its own process). Kept in the store with their history (schema v4);
the newest of each name is in force.

    reserve_floor.<device id>   c/kWh: that battery's asks are at least this
    paused.<aggregator name>    true: the aggregator bids no more until false
    market.<param>              p_balance, p_con, k: the price signal's, from the next
                                slot on; slot_s: logged, as every battery must agree
"""


def floor_name(device_id):
    return "reserve_floor.%d" % device_id


def pause_name(aggregator_name):
    return "paused.%s" % aggregator_name


def set_control(hub, name, value, by):
    kind, _, target = name.partition(".")
    if kind == "reserve_floor":
        if not target.isdigit() or int(target) not in hub.registry.devices:
            raise ValueError("no battery %r" % target)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value < 1000):  # fmt: skip
            raise ValueError("a reserve floor is c/kWh, 0..1000, or null to clear it")
    elif kind == "paused":
        if target not in {a.name for a in hub.agents.values()}:
            raise ValueError("no aggregator %r" % target)
        if value is not None and not isinstance(value, bool):
            raise ValueError("paused is true or false")
    else:
        raise ValueError("unknown control %r (reserve_floor.<device>, paused.<aggregator>)"
                         % name)  # fmt: skip
    hub.store.set_control(name, value, by)
    hub.controls = hub.store.controls()
    hub.events.emit("control", name=name, value=value, by=by)


def follow(hub):
    """Before each slot: re-read the controls, which other processes write too."""
    hub.controls = hub.store.controls()
    signal = hub.market.signal
    for param in ("p_balance", "p_con", "k"):
        value = hub.controls.get("market." + param)
        if value is not None and value != getattr(signal, param):
            hub.log("market: %s %s -> %s (governance)" % (param, getattr(signal, param), value))
            setattr(signal, param, float(value))
    slot_s = hub.controls.get("market.slot_s")
    if slot_s not in (None, hub.cfg["slot_s"], hub.told_slot_s):
        hub.told_slot_s = slot_s  # said once, not every slot
        hub.log("market: governance set slot_s = %s: it takes effect when hub.toml and every "
                "battery's config say so and the hub restarts" % slot_s)  # fmt: skip
