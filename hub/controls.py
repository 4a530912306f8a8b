"""Operators' controls: settings an operator changes while the hub runs (MQTT commands,
the web page) and market parameters a passed governance proposal sets
(hub/integrations/platform/gov.py
writes them from its own process). Kept in the store with their history (schema v4);
the newest of each name is in force.

    reserve_floor.<device id>   c/kWh: that battery's asks are at least this
    paused.<aggregator name>    true: the aggregator bids no more until false
    market.<param>              p_balance, p_con, k: the price signal's, from the next
                                slot on; slot_s: from a boundary the hub schedules
    market.slot_grid            the hub's schedule of a governed slot_s: [before s,
                                from unix s, after s] (schedule_slot_s)
"""

import math
import time

from hub.config import keys_file

GRID = "market.slot_grid"
NOTICE_SLOTS = 2  # a battery sells its next slot: two slots' notice reach it in time
MAX_NOTICE_S = 86400


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
    record(hub, name, value, by)


def record(hub, name, value, by):
    """Kept in the store, in force, and told (an event)."""
    hub.store.set_control(name, value, by)
    hub.controls = hub.store.controls()
    hub.events.emit("control", name=name, value=value, by=by)


def follow(hub, now=None):
    """Before each slot: re-read the controls, which other processes write too."""
    hub.controls = hub.store.controls()
    signal = hub.market.signal
    for param in ("p_balance", "p_con", "k"):
        value = hub.controls.get("market." + param)
        if value is not None and value != getattr(signal, param):
            hub.log("market: %s %s -> %s (governance)" % (param, getattr(signal, param), value))
            setattr(signal, param, float(value))
    schedule_slot_s(hub, time.time() if now is None else now)


# --- the slot grid ------------------------------------------------------------------


def slot_grid(hub):
    """The grid in force (protocol/contract.py slot_length): the last one the hub
    scheduled (GRID, in the store), else hub.toml's slot_s."""
    grid = hub.controls.get(GRID)
    return tuple(grid) if grid else (hub.cfg["slot_s"], 0, hub.cfg["slot_s"])


def schedule_slot_s(hub, now):
    """A slot length governance set (market.slot_s) becomes the grid's from the first
    boundary both lengths share at least NOTICE_SLOTS slots ahead: by then every battery
    that observes the hub's /price over CoAP has heard it (hub/integrations/coap.py sends the
    grid with the price), and no slot straddles the change. The schedule is recorded (GRID,
    by "hub"), so a restarted hub keeps it; one at a time: a newer value waits for it."""
    want = hub.controls.get("market.slot_s")
    if isinstance(want, float) and want.is_integer():
        want = int(want)
    _before, at, current = hub.grid
    if want is None or want == current or now < at or want == hub.told_slot_s:
        return
    hub.told_slot_s = want  # said once, not every slot
    if not isinstance(want, int) or want - hub.cfg["gate_s"] < hub.cfg["answer_s"] + 0.5:
        hub.log("market: governance set slot_s = %r: it leaves no time before the gate "
                "(gate_s %s, answer_s %s): not applied" % (
                    want, hub.cfg["gate_s"], hub.cfg["answer_s"]))  # fmt: skip
        return
    common = current * want // math.gcd(current, want)
    start = -(-(int(now) + NOTICE_SLOTS * current) // common) * common
    if start - now > MAX_NOTICE_S:
        hub.log(
            "market: governance set slot_s = %d: its first boundary shared with %d s "
            "slots is %.0f h away: not applied" % (want, current, (start - now) / 3600)
        )
        return
    hub.set_grid((current, start, want))
    record(hub, GRID, list(hub.grid), "hub")
    hub.log(
        "market: slot_s %d -> %d from %s (governance; batteries hear it on /price)"
        % (current, want, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)))
    )


def off_grid(hub, start, devices):
    """Which of `devices` the hub must not trade in the slot at `start`. Every battery
    shares a grid that never changed, and the slots before a change; from it, only one
    known to have it: it heard the grid over CoAP (hub.grid_told), or the config the hub
    provisioned it with (battery-<id>.json, `gridbid hub keys`) has the new slot_s.
    Others would sell other slots than the hub buys: each is told once and left out."""
    before, at, after = hub.grid
    unsure = [d for d in devices if d not in hub.grid_told]
    if before == after or start < at or not unsure:
        return set()
    where = hub.cfg.get("keys_file")  # the configs read once a slot, not once a battery
    configs = keys_file.battery_configs(where) if where else {}
    off = {d for d in unsure if configs.get(d, {}).get("slot_s") != after}
    for device_id in sorted(off):
        if (device_id, hub.grid) not in hub.told_off_grid:
            hub.told_off_grid.add((device_id, hub.grid))
            hub.log("battery %d is not known to have the new slot grid (%d s slots from %d): "
                    "not traded from then. Set its coap_hub (it hears the grid), or "
                    "provision it with slot_s = %d (gridbid hub keys; tools/flash.py "
                    "provision)" % (device_id, after, at, after))  # fmt: skip
    return off
