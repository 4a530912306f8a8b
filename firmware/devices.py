"""Meter, battery and inverter driven by register maps (hardware/registers/*.json).

    plant = devices.open_plant(config["devices"], "hardware/registers")
    await plant.poll()                   # all three devices, every second or so
    await plant.poll_battery_alarms()    # only the BMS alarm registers, every ~50 ms
    plant.soc_pct, plant.remaining_kwh   # None when unknown or stale, never a guess
    plant.bms_fault()                    # None or (message.FAIL_*, text)
    await plant.set_power(3000)          # + discharge, - charge, clamped to the inverter

Code talks to a kind of device (a "nature", as in OpenEMS), never to a model,
through its register map: loading, checking and read planning are in
register_map.py.

Each point keeps (value, at_ms), or (None, at_ms, error) when its read failed
(point() always gives the three); value() answers None for a failed, missing or
stale point, so an old reading is never presented as a fresh one. now_ms is any
millisecond clock that does not go backwards (monotonic_ms() by default;
ticks_ms() wraps); a Plant given the board's clock keeps using it for its
properties.
"""

import modbus
from modbus import plan_reads

from protocol import message
from protocol.compat import const, ticks_diff, ticks_ms

# The fields of a point spec tuple, as register_map.py compiles them. Its own
# const() copy: nothing of the startup-only register_map stays referenced here
# (app.py drops that module once the plant is open).
_A = const(1)  # address
_N = const(2)  # registers
_T = const(3)  # type
_W = const(4)  # word order
_S = const(5)  # scale
_SF = const(6)  # scale-factor point, or None
_NI = const(7)  # "not implemented" marker, or None

# Health thresholds on state of health (SoH, % of rated capacity). 80 % is the usual
# end-of-warranty line for Li-ion storage; below 60 % a pack is near end of life.
_DEGRADED_BELOW_SOH = const(80)
_POOR_BELOW_SOH = const(60)

_clock = [ticks_ms(), 0]  # the last ticks_ms() read, milliseconds elapsed until then


def monotonic_ms():
    """Milliseconds that never wrap or go back (call it at least once every few days)."""
    now = ticks_ms()
    _clock[1] += ticks_diff(now, _clock[0])
    _clock[0] = now
    return _clock[1]


class Device:
    """One Modbus device read and written through its register map."""

    def __init__(self, kind, register_map, client, unit):
        if register_map.get("kind") != kind:
            raise ValueError("%s map used for a %s" % (register_map.get("kind"), kind))
        if "_specs" not in register_map:
            from register_map import check_map

            check_map(register_map, register_map.get("name", kind))
        self.kind = kind
        self.map = register_map
        self.name = register_map.get("name", kind)
        self.client = client
        self.unit = unit
        self.specs = register_map["_specs"]
        self._state = {}  # point name -> (value, at_ms), or (None, at_ms, error)
        self.last_ok_ms = None  # the last read in which every request succeeded
        self.last_error = None  # the ModbusError of the last failed request
        self.plan = self.alarm_plan = None  # a SunSpec map: once bound (register_map.bind)
        if all(spec[_A] >= 0 for spec in self.specs.values()):
            self.plan = self._plan(self.specs)
            alarm = register_map.get("alarm") or {}
            fast = [n for n in (alarm.get("point"), alarm.get("state_point")) if n]
            self.alarm_plan = self._plan(fast)

    def _plan(self, names):
        wanted = set(names)
        for name in names:  # a point is only as good as its scale factor: read both
            if self.specs[name][_SF]:
                wanted.add(self.specs[name][_SF])
        limit = self.map.get("max_registers", modbus.MAX_READ)
        return plan_reads(self.specs, wanted, self.map.get("blocks"), limit)

    async def read(self, now_ms, names=None, plan=None):
        """Read the named points (default all) in few requests; True if all succeeded.
        plan: a plan made before (self.alarm_plan), not made again on every call."""
        if self.plan is None:  # a SunSpec map not bound: never read at a guessed address
            self.last_error = modbus.ModbusError("%s: SunSpec models not found" % self.name)
            return False
        if plan is None:
            plan = self.plan if names is None else self._plan(names)
        raws, ok = {}, True
        for function, start, count, members in plan:
            try:
                if function == modbus.READ_INPUT:
                    regs = await self.client.read_input(self.unit, start, count)
                else:
                    regs = await self.client.read_holding(self.unit, start, count)
            except modbus.ModbusError as exc:
                ok, self.last_error = False, exc
                error = "%s: %s" % (type(exc).__name__, exc)
                for name in members:
                    self._state[name] = (None, now_ms, error)
                continue
            for name in members:
                spec = self.specs[name]
                offset = spec[_A] - start
                raws[name] = modbus.decode(regs[offset : offset + spec[_N]], spec[_T], spec[_W])
        for name, raw in raws.items():  # checked, now that every scale factor is in
            spec = self.specs[name]
            if raw == spec[_NI] or raw != raw:  # "not implemented" marker, or a NaN float
                state = (None, now_ms, "not available")
            elif spec[_SF] and self._factor(raws.get(spec[_SF]), spec[_SF]) is None:
                state = (None, now_ms, "scale factor %s unknown" % spec[_SF])
            else:
                # The raw number, scaled by value(): for most points a small int, which
                # takes no heap, where a float would take 32 bytes on the 64-bit VM; and
                # a 2-tuple is one heap block, a 3-tuple two.
                state = (raw, now_ms)
            self._state[name] = state
        if ok:
            self.last_ok_ms = now_ms
        return ok

    def value(self, name, now_ms, max_age_ms=None):
        """The point's value, or None when unknown, failed or older than max_age_ms."""
        derived = self.map["_derived"].get(name)
        if derived is not None:
            product = derived[1]
            for other in derived[0]:
                value = self.value(other, now_ms, max_age_ms)
                if value is None:
                    return None
                product *= value
            return product
        state = self._state.get(name)
        if state is None or len(state) == 3:  # never read, or failed
            return None
        if max_age_ms is not None and now_ms - state[1] > max_age_ms:
            return None
        spec = self.specs[name]
        if not spec[_SF]:
            return modbus.scaled(state[0], spec[_S])
        # Its scale factor as last read: with the point, as every read plan takes both.
        sf = self._state.get(spec[_SF])
        sf = None if sf is None or len(sf) == 3 else self._factor(sf[0], spec[_SF])
        return None if sf is None else modbus.scaled(state[0], spec[_S], sf)

    def _factor(self, raw, name):
        """A scale factor's raw reading (point name), or None when it is not a usable one."""
        if raw is None or raw == self.specs[name][_NI] or not -10 <= raw <= 10:
            return None
        return raw

    def point(self, name):
        """(value, at_ms, error) as last read, or None if never read; for logs and status."""
        state = self._state.get(name)
        if state is None or len(state) == 3:
            return state
        return (self.value(name, state[1]), state[1], None)

    def alarms(self, now_ms, max_age_ms):
        """Names of the active alarm flags and fault state; None when unknown."""
        alarm = self.map.get("alarm")
        if not alarm:
            return []
        bits = self.value(alarm["point"], now_ms, max_age_ms)
        state = self.value(alarm.get("state_point", ""), now_ms, max_age_ms)
        if bits is None or (state is None and "fault_states" in alarm):
            return None
        mask, order, names = alarm.get("alarm_bits") or (0, (), "")  # register_map.check_map
        active = [n for b, n in zip(order, names.split()) if bits >> b & 1] if bits & mask else []
        active += ["state " + n for n, v in alarm.get("fault_states", {}).items() if v == state]
        return sorted(active)

    async def write(self, values, now_ms=None):
        """Write [(point, value)] (scaled values) in as few requests as contiguity allows."""
        regs = {}
        for name, value in values:
            spec = self.specs[name]
            sf = None
            if spec[_SF]:
                sf = self.value(spec[_SF], now_ms or 0, None)
                if sf is None:
                    raise modbus.ModbusError("%s: scale factor %s unknown" % (name, spec[_SF]))
            raw = modbus.unscaled(value, spec[_S], sf)
            if spec[_T] != "f32":
                raw = int(round(raw))
            for i, reg in enumerate(modbus.encode(raw, spec[_T], spec[_W])):
                regs[spec[_A] + i] = reg
        addresses = sorted(regs)
        while addresses:
            run = 1
            while run < len(addresses) and addresses[run] == addresses[0] + run:
                run += 1
            block = [regs[a] for a in addresses[:run]]
            if run == 1:
                await self.client.write_register(self.unit, addresses[0], block[0])
            else:
                await self.client.write_registers(self.unit, addresses[0], block)
            addresses = addresses[run:]


class Plant:
    """The meter, battery and inverter of one BESS, in gridbid's units and signs."""

    def __init__(self, meter, battery, inverter, link_timeout_ms=1000, max_age_ms=5000):
        self.meter = meter
        self.battery = battery
        self.inverter = inverter
        self.link_timeout_ms = link_timeout_ms
        self.max_age_ms = max_age_ms  # older values are unknown
        self._since_ms = None  # first poll: a link that never worked is lost from then
        self._offset_ms = 0

    def _now(self, now_ms):
        # Callers may pass their own clock (the board's now_ms); the properties, which
        # take no time, then run on the same clock: its last reading plus the time
        # elapsed since on monotonic_ms().
        if now_ms is None:
            return monotonic_ms() + self._offset_ms
        self._offset_ms = now_ms - monotonic_ms()
        return now_ms

    async def poll(self, now_ms=None):
        """Read all three devices; one failing does not stop the others. [ok, ok, ok]."""
        now = self._now(now_ms)
        if self._since_ms is None:
            self._since_ms = now
        # One after the other, not gathered: the three usually share one link, whose lock
        # takes them in turn anyway, and three tasks in flight cost a small heap ~1.5 KB.
        return [
            await self.meter.read(now),
            await self.battery.read(now),
            await self.inverter.read(now),
        ]

    async def poll_battery_alarms(self, now_ms=None):
        """Read only the BMS alarm/state registers (the fast path, one short request)."""
        now = self._now(now_ms)
        if self._since_ms is None:
            self._since_ms = now
        return await self.battery.read(now, plan=self.battery.alarm_plan)

    def value(self, device, name, now_ms=None):
        return device.value(name, self._now(now_ms), self.max_age_ms)

    soc_pct = property(lambda self: self.value(self.battery, "soc_pct"))
    soh_pct = property(lambda self: self.value(self.battery, "soh_pct"))
    remaining_kwh = property(lambda self: self.value(self.battery, "remaining_kwh"))
    capacity_kwh = property(lambda self: self.value(self.battery, "capacity_kwh"))
    voltage_v = property(lambda self: self.value(self.battery, "voltage_v"))
    current_a = property(lambda self: self.value(self.battery, "current_a"))
    temperature_c = property(lambda self: self.value(self.battery, "temperature_c"))
    power_w = property(lambda self: self.value(self.inverter, "power_w"))  # + = discharging
    grid_power_w = property(lambda self: self.value(self.meter, "power_w"))  # + = export
    export_kwh = property(lambda self: self.value(self.meter, "export_kwh"))
    import_kwh = property(lambda self: self.value(self.meter, "import_kwh"))

    def bms_fault(self, now_ms=None):
        """None, or (FAIL_BMS_LINK, text) with no good BMS read for link_timeout_ms, or
        (FAIL_BMS_ALARM, text) with alarm bits or a fault state set."""
        now = self._now(now_ms)
        last = self.battery.last_ok_ms
        if last is None:
            last = self._since_ms
        if last is None:
            return None  # never polled: nothing known yet, nothing failed yet
        if now - last >= self.link_timeout_ms:
            events = self.battery.map["alarm"]["point"]
            error = (self.battery.point(events) or (None, None, "never read"))[2]
            return (message.FAIL_BMS_LINK, "no BMS reading for %d ms: %s" % (now - last, error))
        active = self.battery.alarms(now, self.link_timeout_ms)
        if active:
            return (message.FAIL_BMS_ALARM, "BMS alarm: " + ", ".join(active))
        return None

    def health_code(self, now_ms=None):
        """HEALTH_FAULT on a BMS fault; POOR below 60 % SoH; DEGRADED below 80 %, with
        warnings, or when SoH is unknown; else GOOD."""
        now = self._now(now_ms)
        if self.bms_fault(now) is not None:
            return message.HEALTH_FAULT
        soh = self.battery.value("soh_pct", now, self.max_age_ms)
        if soh is None:
            return message.HEALTH_DEGRADED  # unknown health is not good health
        if soh < _POOR_BELOW_SOH:
            return message.HEALTH_POOR
        # any warning bit set (the map's warning_bits, as check_map's mask) degrades it
        alarm = self.battery.map.get("alarm") or {}
        bits = self.battery.value(alarm.get("point", ""), now, self.max_age_ms)
        if soh < _DEGRADED_BELOW_SOH or (bits and bits & alarm.get("warning_mask", 0)):
            return message.HEALTH_DEGRADED
        return message.HEALTH_GOOD

    async def set_power(self, watts, now_ms=None):
        """Command watts (+ discharge, - charge, 0 idle), clamped to the inverter's limits;
        the watts commanded. Raises ModbusError when the write (or a limit read) fails."""
        now = self._now(now_ms)
        inverter = self.inverter
        setpoint = inverter.map["setpoint"]
        limits = (setpoint["max_charge_w"], setpoint["max_discharge_w"], setpoint.get("of"))
        names = [setpoint["point"]] + [p[0] for p in setpoint.get("enable", [])]
        names += [n for n in limits if n]
        if any(inverter.value(n, now) is None for n in names):
            if not await inverter.read(now, names):  # limits and scale factors are static
                raise inverter.last_error
        low = inverter.value(setpoint["max_charge_w"], now)
        high = inverter.value(setpoint["max_discharge_w"], now)
        if low is None or high is None:
            raise modbus.ModbusError("inverter power limits unknown")
        target = max(-low, min(watts, high))
        value = target * setpoint.get("sign", 1)
        if setpoint.get("unit") == "%":
            of = inverter.value(setpoint["of"], now)
            if not of:
                raise modbus.ModbusError("inverter %s unknown" % setpoint["of"])
            value = value * 100.0 / of
        # An enable pair's None: the map's "mirror", the other limit at -value (a window
        # [value, value], as SunSpec model 124's rates make one)
        values = [(n, -value if v is None else v) for n, v in setpoint.get("enable", [])]
        await inverter.write(values + [(setpoint["point"], value)], now)
        return target

    async def close(self):
        closed = []
        for device in (self.meter, self.battery, self.inverter):
            if device.client not in closed:
                closed.append(device.client)
                await device.client.close()


def open_plant(config, path, open_port=None):
    """A Plant from config (devices): {"meter": {"map", "link": "tcp"|"rtu", "host", "port" |
    "path" | "uart", "baud", "unit", "timeout_ms"}, "battery": {...}, "inverter": {...},
    "link_timeout_ms": 1000}, with the register maps in the folder path. Devices on one
    link (host:port, path, uart) share a client; open_port(link config) opens an RTU
    link's serial port (default serial_port.open_port). ValueError (MapError) names
    what is wrong."""
    from register_map import load_map

    if not isinstance(config, dict):
        raise ValueError("devices config must be an object")
    clients, built = {}, {}
    for role in ("meter", "battery", "inverter"):
        cfg = config.get(role)
        where = "devices config: %s" % role
        if not isinstance(cfg, dict) or not isinstance(cfg.get("map"), str):
            raise ValueError("%s: missing, or without a 'map' (a file in %s)" % (where, path))
        file = path + "/" + cfg["map"] + ("" if cfg["map"].endswith(".json") else ".json")
        register_map = load_map(file)
        if register_map["kind"] != role:
            raise ValueError("%s: %s is a %s map" % (where, file, register_map["kind"]))
        unit, link, timeout_ms = cfg.get("unit"), cfg.get("link"), cfg.get("timeout_ms", 500)
        if not isinstance(unit, int) or not 1 <= unit <= 247:
            raise ValueError("%s: unit must be 1..247" % where)
        if link == "tcp":
            host, port = cfg.get("host"), cfg.get("port", 502)
            if not isinstance(host, str) or not isinstance(port, int):
                raise ValueError("%s: a tcp link needs 'host' and 'port'" % where)
            key = (host, port)
            if key not in clients:
                clients[key] = modbus.TcpClient(host, port, timeout_ms)
        elif link == "rtu":
            key = (cfg.get("path"), cfg.get("uart"))
            if key not in clients:
                if open_port is None:
                    import serial_port  # only with an RTU link: it pulls in machine/termios

                    open_port = serial_port.open_port
                clients[key] = modbus.RtuClient(open_port(cfg), timeout_ms)
        else:
            raise ValueError("%s: link must be tcp or rtu, not %r" % (where, link))
        built[role] = Device(role, register_map, clients[key], unit)
    meter, battery, inverter = built["meter"], built["battery"], built["inverter"]
    return Plant(meter, battery, inverter, config.get("link_timeout_ms", 1000))
