"""Drive the firmware's Modbus layer against real devices (the simulator), step by step.

    micropython tests/device/modbus_probe.py JOB.json      (firmware/ and the repo root on the path)

JOB is {"devices": {...as in config.json...}, "maps_dir": "...", "steps": [...]}.
The first line says what the boot check (sunspec.check) found, unless the job
says "assume_layout" (SunSpec models bound where the usual layout has them, with no
read: for a device that fails from the start). Each step prints one JSON line;
tests/firmware/test_modbus_devices.py reads them. Runs unchanged on the MicroPython
VM and on CPython. Steps:

    {"do": "poll"}                          all three devices: canonical values, fault, health
    {"do": "alarms"}                        the fast path: BMS alarm registers only
    {"do": "set_power", "watts": W}         the watts commanded (clamped)
    {"do": "read", "role": R, "function": 3, "address": A, "count": N}   one raw request
    {"do": "sleep", "ms": MS}
    {"do": "watch", "ms": MS, "period_ms": 50}   fast-poll until bms_fault; wall-clock time seen
    {"do": "bench", "role": R, "n": N}      N sequential reads of the role's first request

A ModbusError in a step is reported as {"error": class name, "code": ..., "elapsed_ms": ...}.
"""

import asyncio
import json
import sys
import time

import devices
import modbus
import sunspec

from protocol.compat import ticks_diff, ticks_us

VALUES = (
    "soc_pct",
    "soh_pct",
    "remaining_kwh",
    "capacity_kwh",
    "voltage_v",
    "current_a",
    "temperature_c",
    "power_w",
    "grid_power_w",
    "export_kwh",
    "import_kwh",
)


def wall_ms():
    return time.time_ns() // 1000000


def snapshot(plant):
    out = {name: getattr(plant, name) for name in VALUES}
    out["fault"] = plant.bms_fault()
    out["health"] = plant.health_code()
    return out


async def step(plant, spec):
    kind = spec["do"]
    devs = {"meter": plant.meter, "battery": plant.battery, "inverter": plant.inverter}
    if kind == "poll":
        ok = await plant.poll()
        out = snapshot(plant)
        out["ok"] = list(ok)
        return out
    if kind == "alarms":
        ok = await plant.poll_battery_alarms()
        return {"ok": ok, "fault": plant.bms_fault()}
    if kind == "set_power":
        return {"commanded": await plant.set_power(spec["watts"])}
    if kind == "sleep":
        await asyncio.sleep(spec["ms"] / 1000)
        return {}
    if kind == "read":
        device = devs[spec["role"]]
        if spec.get("function", 3) == 4:
            regs = await device.client.read_input(device.unit, spec["address"], spec["count"])
        else:
            regs = await device.client.read_holding(device.unit, spec["address"], spec["count"])
        return {"regs": regs}
    if kind == "watch":
        end = devices.monotonic_ms() + spec["ms"]
        while devices.monotonic_ms() < end:
            await plant.poll_battery_alarms()
            fault = plant.bms_fault()
            if fault is not None:
                return {"fault": fault, "seen_wall_ms": wall_ms()}
            await asyncio.sleep(spec.get("period_ms", 50) / 1000)
        return {"fault": None}
    if kind == "bench":
        device = devs[spec["role"]]
        function, start, count, _names = device.plan[0]
        read = device.client.read_input if function == 4 else device.client.read_holding
        n = spec["n"]
        t0 = ticks_us()
        for _ in range(n):
            await read(device.unit, start, count)
        return {"us_per_request": ticks_diff(ticks_us(), t0) / n, "registers": count}
    raise ValueError("unknown step %r" % kind)


def assume_layout(device):
    """Bind a SunSpec map where the usual layout has it: from 40000, common model first."""
    if device.plan is not None:
        return
    chain, address = [(1, 40002, 66)], 40070
    for entry in device.map["sunspec"]:
        chain.append((entry[0], address, entry[1]))
        address += 2 + entry[1]
    sunspec.bind(device, (40000, chain))


async def main(job):
    plant = devices.open_plant(job["devices"], job["maps_dir"])
    # As the firmware boots: SunSpec models found and bound, ranges checked (its lines)
    problems, t0 = [], ticks_us()
    if job.get("assume_layout"):
        for role in ("meter", "battery", "inverter"):
            assume_layout(getattr(plant, role))
    else:
        roles = {r: getattr(plant, r) for r in ("meter", "battery", "inverter")}
        problems = await sunspec.check(roles, devices.monotonic_ms())
    bases = {r: getattr(plant, r).map.get("blocks") for r in ("meter", "battery", "inverter")}
    check_ms = ticks_diff(ticks_us(), t0) / 1000
    print(json.dumps({"runtime": sys.implementation.name, "start_wall_ms": wall_ms(),
                      "check_ms": check_ms,
                      "problems": problems, "blocks": bases}))  # fmt: skip
    for spec in job["steps"]:
        t0 = ticks_us()
        try:
            out = await step(plant, spec)
        except modbus.ModbusError as exc:
            out = {
                "error": type(exc).__name__,
                "message": str(exc),
                "code": getattr(exc, "code", None),
            }
        out["do"] = spec["do"]
        out["elapsed_ms"] = ticks_diff(ticks_us(), t0) / 1000
        print(json.dumps(out))
    await plant.close()


with open(sys.argv[1]) as f:
    asyncio.run(main(json.load(f)))
