"""A simulated energy meter, battery (BMS) and inverter over Modbus TCP and RTU.

    gridbid device sim --tcp-port 5020 [--rtu /tmp/ttyV0] [--capacity-kwh 13.5 --soc 80]
                       [--profile sma_storage]   (a site's three maps: registers.PROFILES)

The three devices are served by pymodbus from the same register maps the
firmware reads (hardware/registers/*.json), on unit ids 1 (meter), 2 (battery)
and 3 (inverter). Values are encoded (simulator/registers.py) independently of the
firmware's decoder, so a test that reads them back checks both sides.

Every step (100 ms) the inverter's setpoint, as written by the firmware, becomes
its actual power (clamped to its limits, zero when the battery is empty, full
or in alarm); the battery's remaining energy falls while discharging and rises
while charging; the meter (at the grid connection, + = export) accumulates
export and import energy. --speed runs simulated time faster than real time.

In-process (tests):

    sim = Simulation(capacity_kwh=13.5, soc_pct=80)
    await sim.start(tcp_port=0)          # sim.tcp_port is the port it got
    sim.set_alarm(1 << 1)                # BMS event bits (the map's alarm point)
    sim.fail("battery")                  # that unit stops answering (a lost link)
    sim.throw(3, 2)                      # unit 3 answers "illegal data address"
    sim.recover()                        # all units answer normally again
    Simulation(layouts={"battery": {"base": 0, "order": [803, 1, 802]}})
                                         # a SunSpec map's layout (registers.sunspec_layout)
    sim.state["soc_pct"]
    await sim.stop()
"""

import asyncio
import functools
import sys
import time
from collections import deque

from simulator.registers import (
    MAPS_DIR,
    PROFILES,
    from_registers,
    load_map,
    map_points,
    sunspec_layout,
    to_registers,
    word_count,
)

# pymodbus is imported where it is used, so that `gridbid` can list this command's
# options (add_arguments) without loading it.

ROLES = ("meter", "battery", "inverter")
DEFAULT_MAPS = PROFILES["sunspec"]
DEFAULT_UNITS = {"meter": 1, "battery": 2, "inverter": 3}


class Simulation:
    """Meter, battery and inverter state, served over Modbus (see the module docstring)."""

    # fmt: off
    def __init__(self, capacity_kwh=13.5, soc_pct=80.0, soh_pct=96.0, max_power_w=5000.0,
                 load_w=0.0, battery_v=51.2, step_ms=100, speed=1.0, maps=None, units=None,
                 maps_dir=MAPS_DIR, layouts=None):
        # fmt: on
        self.maps = {r: load_map((maps or {}).get(r, DEFAULT_MAPS[r]), maps_dir) for r in ROLES}
        # A SunSpec map's models are laid out as a device would (base, order: its layout)
        self.layouts = {
            role: sunspec_layout(m, **(layouts or {}).get(role, {}))
            for role, m in self.maps.items()
            if "sunspec" in m
        }
        starts = {role: layout[0] for role, layout in self.layouts.items()}
        self.points = {role: map_points(m, starts.get(role)) for role, m in self.maps.items()}
        self.units = dict(units or DEFAULT_UNITS)
        self.roles = {unit: role for role, unit in self.units.items()}
        self.step_ms = step_ms
        self.speed = speed
        self.max_power_w = float(max_power_w)
        self.load_w = float(load_w)
        self.battery_v = float(battery_v)
        # fmt: off
        self.state = {
            "capacity_kwh": float(capacity_kwh), "soc_pct": float(soc_pct),
            "remaining_kwh": capacity_kwh * soc_pct / 100.0, "soh_pct": float(soh_pct),
            "setpoint_w": 0.0, "power_w": 0.0, "grid_power_w": 0.0, "grid_voltage_v": 230.0,
            "export_kwh": 0.0, "import_kwh": 0.0, "voltage_v": self.battery_v,
            "current_a": 0.0, "temperature_c": 25.0, "alarm_bits": 0, "inverter_alarm_bits": 0,
            "failed": [], "throwing": {}, "elapsed_s": 0.0,
        }
        # fmt: on
        self.writes = deque(maxlen=100)  # (role, address, values) as the firmware wrote them
        self.sfs = {role: self._choose_scale_factors(role) for role in ROLES}
        self.writable = {role: self._writable(role) for role in ROLES}
        self.tcp_port = None
        self._servers = []
        self._memory = {}
        self._task = None

    # --- what each point holds -------------------------------------------------

    def _spans(self, role):
        """Largest magnitude each point may have to hold (picks its scale factor)."""
        s, w = self.state, self.max_power_w * 2
        # fmt: off
        spans = {"soc_pct": 100, "soh_pct": 100, "temperature_c": 150, "voltage_v": 1000,
                 "current_a": 600, "capacity_kwh": s["capacity_kwh"], "max_power_w": w,
                 "max_charge_w": w, "max_discharge_w": w, "power_w": w, "dc_power_w": w}
        # fmt: on
        setpoint = self.maps[role].get("setpoint")
        if setpoint:
            spans[setpoint["point"]] = w if setpoint.get("unit", "W") == "W" else 100
        return spans

    def _choose_scale_factors(self, role):
        """The finest scale factor (10^-2 .. 10^6) at which every point using it fits."""
        points, spans, chosen = self.points[role], self._spans(role), {}
        for sf_name in {p["sf"] for p in points.values() if p.get("sf")}:
            users = [(n, p) for n, p in points.items() if p.get("sf") == sf_name and n in spans]
            for sf in range(-2, 7):
                try:
                    for name, point in users:
                        raw = spans[name] / abs(point["scale"]) / 10**sf
                        to_registers(raw, point)
                        if point["type"].startswith("i"):
                            to_registers(-raw, point)
                except ValueError:
                    continue
                chosen[sf_name] = sf
                break
        return chosen

    def _writable(self, role):
        setpoint = self.maps[role].get("setpoint") or {}
        names = [setpoint.get("point"), setpoint.get("mirror")]
        names += [pair[0] for pair in setpoint.get("enable", [])]
        points = self.points[role]
        return {points[n]["address"] + i for n in names if n for i in range(word_count(points[n]))}

    def _values(self, role):
        s = self.state
        alarm = self.maps[role].get("alarm") or {}
        if role == "meter":
            # fmt: off
            return {"voltage_v": s["grid_voltage_v"], "power_w": s["grid_power_w"],
                    "current_a": abs(s["grid_power_w"]) / s["grid_voltage_v"],
                    "frequency_hz": 50.0, "import_kwh": s["import_kwh"],
                    "export_kwh": s["export_kwh"], **self._phases()}
            # fmt: on
        if role == "battery":
            bits, limit = s["alarm_bits"], self.max_power_w
            # fmt: off
            values = {"capacity_kwh": s["capacity_kwh"], "soc_pct": s["soc_pct"],
                      "soh_pct": s["soh_pct"], "voltage_v": s["voltage_v"],
                      "current_a": s["current_a"], "dc_power_w": s["power_w"],
                      "temperature_c": s["temperature_c"], "max_charge_w": limit,
                      "max_discharge_w": limit}
            # fmt: on
        else:
            bits, limit = s["inverter_alarm_bits"], self.max_power_w
            values = {
                "power_w": s["power_w"],
                "max_power_w": limit,
                "max_charge_w": limit,
                "max_discharge_w": limit,
            }
        if alarm:
            values[alarm["point"]] = bits
            if alarm.get("state_point"):
                fault = self._alarmed(role) and alarm.get("fault_states")
                ok = alarm.get("ok_state", 0)
                values[alarm["state_point"]] = min(alarm["fault_states"].values()) if fault else ok
        return values

    def _phases(self):
        """A three-phase meter's per-phase points: the power and current shared evenly."""
        volts, watts = self.state["grid_voltage_v"], self.state["grid_power_w"] / 3
        each = {"voltage_v": volts, "power_w": watts, "current_a": abs(watts) / volts}
        return {phase + name: v for phase in ("l1_", "l2_", "l3_") for name, v in each.items()}

    def _alarmed(self, role):
        alarm = self.maps[role].get("alarm") or {}
        bits = self.state["alarm_bits" if role == "battery" else "inverter_alarm_bits"]
        if not alarm.get("alarm_bits"):  # a state only (e.g. SMA's Condition): any bit faults it
            return bool(bits and alarm.get("fault_states"))
        return any(bits >> bit & 1 for bit in alarm.get("alarm_bits", {}).values())

    # --- registers ---------------------------------------------------------------

    def _put(self, role, address, words):
        start, _count, registers, _flags = self._memory[role]
        registers[address - start : address - start + len(words)] = words

    def _get(self, role, address, count):
        start, _count, registers, _flags = self._memory[role]
        return registers[address - start : address - start + count]

    def _publish(self):
        """Encode the state into every (read-only) point's registers."""
        for role in ROLES:
            points, sfs = self.points[role], self.sfs[role]
            for name, value in self._values(role).items():
                point = points.get(name)
                if point is None:
                    continue
                raw = value / point["scale"] / 10 ** sfs.get(point.get("sf"), 0)
                self._put(role, point["address"], to_registers(raw, point))

    def _setup_registers(self):
        for role in ROLES:
            starts, words, _block = self.layouts.get(role, ({}, [], None))
            for address, values in words:  # 'SunS', the model headers, the end marker
                self._put(role, address, values)
            for constant in self.maps[role].get("constants", []):
                address = constant.get("address")
                if address is None:
                    address = starts[constant["model"]] + constant["offset"]
                self._put(role, address, constant["values"])
            for name, sf in self.sfs[role].items():
                self._put(role, self.points[role][name]["address"], [sf & 0xFFFF])
        self._publish()

    def read_point(self, role, name):
        """A point's value as the registers hold it now (scaled), e.g. the setpoint."""
        point = self.points[role][name]
        raw = from_registers(self._get(role, point["address"], word_count(point)), point)
        return raw * point["scale"] * 10 ** self.sfs[role].get(point.get("sf"), 0)

    def setpoint_w(self):
        """The inverter's commanded power (+ discharge) from its registers; 0 if not enabled."""
        setpoint = self.maps["inverter"]["setpoint"]
        for name, value in setpoint.get("enable", []):
            if self.read_point("inverter", name) != value:
                return 0.0
        watts = self.read_point("inverter", setpoint["point"]) * setpoint.get("sign", 1)
        if setpoint.get("unit") == "%":
            watts = watts * self._values("inverter")[setpoint["of"]] / 100.0
        return float(watts)

    # --- time --------------------------------------------------------------------

    def step(self, dt_s):
        """Advance simulated time by dt_s (already multiplied by speed)."""
        s = self.state
        s["setpoint_w"] = target = self.setpoint_w()
        power = max(-self.max_power_w, min(self.max_power_w, target))
        if self._alarmed("battery") or self._alarmed("inverter"):
            power = 0.0  # the BMS opens its contactor
        if (power > 0 and s["remaining_kwh"] <= 0) or (
            power < 0 and s["remaining_kwh"] >= s["capacity_kwh"]
        ):
            power = 0.0
        energy = power * dt_s / 3.6e6
        s["remaining_kwh"] = max(0.0, min(s["capacity_kwh"], s["remaining_kwh"] - energy))
        s["soc_pct"] = 100.0 * s["remaining_kwh"] / s["capacity_kwh"]
        s["power_w"] = power
        s["grid_power_w"] = grid = power - self.load_w
        key = "export_kwh" if grid > 0 else "import_kwh"
        s[key] += abs(grid) * dt_s / 3.6e6
        s["voltage_v"] = self.battery_v * (0.92 + 0.16 * s["soc_pct"] / 100.0)
        s["current_a"] = power / s["voltage_v"]
        s["temperature_c"] = 25.0 + 10.0 * abs(power) / self.max_power_w
        s["elapsed_s"] += dt_s
        self._publish()

    async def _run(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.step_ms / 1000)
            now = time.monotonic()
            self.step((now - last) * self.speed)
            last = now

    # --- faults ------------------------------------------------------------------

    def _role(self, unit_or_role):
        return unit_or_role if unit_or_role in ROLES else self.roles[unit_or_role]

    def set_alarm(self, bits, role="battery"):
        """Set the device's alarm/event bits (0 clears them)."""
        self.state["alarm_bits" if role == "battery" else "inverter_alarm_bits"] = bits
        self._publish()

    def fail(self, unit_or_role):
        """That unit stops answering: requests to it time out, as on a broken link."""
        role = self._role(unit_or_role)
        if role not in self.state["failed"]:
            self.state["failed"].append(role)

    def throw(self, unit_or_role, code):
        """That unit answers every request with Modbus exception code (1..11)."""
        if not 1 <= code <= 11:
            raise ValueError("a Modbus exception code is 1..11, not %r" % (code,))
        self.state["throwing"][self._role(unit_or_role)] = code

    def recover(self, unit_or_role=None):
        """Undo fail() and throw() for one unit, or for all."""
        roles = ROLES if unit_or_role is None else (self._role(unit_or_role),)
        for role in roles:
            if role in self.state["failed"]:
                self.state["failed"].remove(role)
            self.state["throwing"].pop(role, None)

    async def _action(self, role, function_code, start, address, count, registers, values):
        from pymodbus.constants import ExcCodes

        if role in self.state["failed"]:
            raise asyncio.CancelledError  # pymodbus then sends nothing at all
        code = self.state["throwing"].get(role)
        if code:
            return ExcCodes(code)
        if values is not None:
            if any(address + i not in self.writable[role] for i in range(count)):
                return ExcCodes.ILLEGAL_ADDRESS  # measurements are read-only
            self.writes.append((role, address, list(values)))
        return None

    # --- serving -----------------------------------------------------------------

    def _devices(self):
        from pymodbus.simulator import DataType, SimData, SimDevice

        devices = []
        for role in ROLES:
            points = self.points[role]
            if role in self.layouts:
                blocks = [self.layouts[role][2]]
            else:
                blocks = self.maps[role].get("blocks") or [
                    [p["address"], word_count(p)] for p in points.values()
                ]
            simdata = [
                SimData(start, values=[0] * count, datatype=DataType.REGISTERS)
                for start, count in sorted(blocks)
            ]
            action = functools.partial(self._action, role)
            devices.append(SimDevice(id=self.units[role], simdata=simdata, action=action))
        return devices

    async def start(self, tcp_port=5020, host="127.0.0.1", rtu_port=None, baudrate=9600):
        """Serve Modbus TCP on host:tcp_port (0: any free port; None: no TCP) and, with
        rtu_port (a serial device or pty path), Modbus RTU; all share one memory."""
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        if tcp_port is not None:
            server = ModbusTcpServer(self._devices(), address=(host, tcp_port))
            await server.serve_forever(background=True)
            self.tcp_port = server.transport.sockets[0].getsockname()[1]
            self._servers.append(server)
        if rtu_port:
            server = ModbusSerialServer(self._devices(), port=rtu_port, baudrate=baudrate)
            if self._servers:
                server.context = self._servers[0].context  # one memory behind both
            await server.serve_forever(background=True)
            self._servers.append(server)
        if not self._servers:
            raise ValueError("nothing to serve: give a TCP port or an RTU port")
        core = self._servers[0].context
        self._memory = {role: core.devices[self.units[role]].block["x"] for role in ROLES}
        self._setup_registers()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for server in self._servers:
            await server.shutdown()
        self._servers = []


def add_arguments(parser):
    parser.add_argument("--host", default="127.0.0.1", help="TCP address (127.0.0.1)")
    parser.add_argument("--tcp-port", type=int, default=5020, help="Modbus TCP port (5020)")
    parser.add_argument("--rtu", metavar="PATH", help="also serve Modbus RTU on this port/pty")
    parser.add_argument("--baud", type=int, default=9600, help="RTU baud rate (9600)")
    parser.add_argument("--capacity-kwh", type=float, default=13.5, help="battery (13.5)")
    parser.add_argument("--soc", type=float, default=80.0, help="initial state of charge %%")
    parser.add_argument("--soh", type=float, default=96.0, help="state of health %% (96)")
    parser.add_argument("--max-power-w", type=float, default=5000.0, help="inverter limit")
    parser.add_argument("--load-w", type=float, default=0.0, help="house load behind the meter")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated s per real s")
    parser.add_argument("--units", default="1,2,3", help="meter,battery,inverter unit ids")
    parser.add_argument("--every", type=float, default=2.0, help="print the state every S s")
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="sunspec",
        help="the three maps of a site (sunspec); --*-map overrides one",
    )  # fmt: skip
    for role in ROLES:
        parser.add_argument("--%s-map" % role, help="register map in hardware/registers")


def describe(state):
    return (
        "t {elapsed_s:7.1f} s  soc {soc_pct:6.2f} %  remaining {remaining_kwh:6.3f} kWh  "
        "setpoint {setpoint_w:+7.0f} W  power {power_w:+7.0f} W  grid {grid_power_w:+7.0f} W  "
        "export {export_kwh:.4f} kWh  import {import_kwh:.4f} kWh  alarms {alarm_bits:#x}"
    ).format(**state)


async def serve(args):
    units = dict(zip(ROLES, (int(u) for u in args.units.split(","))))
    maps = {r: getattr(args, r + "_map") or PROFILES[args.profile][r] for r in ROLES}
    # fmt: off
    sim = Simulation(capacity_kwh=args.capacity_kwh, soc_pct=args.soc, soh_pct=args.soh,
                     max_power_w=args.max_power_w, load_w=args.load_w, speed=args.speed,
                     units=units, maps=maps)
    # fmt: on
    await sim.start(tcp_port=args.tcp_port, host=args.host, rtu_port=args.rtu, baudrate=args.baud)
    for role in ROLES:
        print("%-8s unit %d  %s" % (role, sim.units[role], sim.maps[role]["name"]))
    where = ["tcp %s:%d" % (args.host, sim.tcp_port)] + (["rtu %s" % args.rtu] if args.rtu else [])
    print("serving Modbus on %s; Ctrl-C stops" % " and ".join(where), flush=True)
    try:
        while True:
            await asyncio.sleep(args.every)
            print(describe(sim.state), flush=True)
    finally:
        await sim.stop()


def run(args):
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0
