"""The MQTT bridge's costs (hub/integrations/mqtt/bridge.py), against a real mosquitto on loopback.

    .venv/bin/python bench/mqtt_bridge.py [--events 20000]

Prints: what an event costs the hub's event loop (the listener: outbox insert and
hand-off), with the outbox at synchronous=NORMAL (the bridge's) and FULL (for
comparison); events per second from emit to PUBACK for a few publish windows; and
how fast a backlog written while the broker was away is replayed.
"""

import argparse
import asyncio
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.config import hub_toml, keys_file  # noqa: E402
from hub.integrations.mqtt.outbox import Outbox  # noqa: E402
from hub.service import Hub  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder, port):
    conf = folder / "bench.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                    "max_inflight_messages 1000\nuser root\n" % port)  # fmt: skip
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(500):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.01)
    raise RuntimeError("mosquitto did not start")


def make_hub(folder, port, window):
    settings = {
        "hub": {"name": "bench", "store": "hub.sqlite", "slot_s": 10, "gate_s": 3},
        "aggregator": [{"key_id": 1}],
    }
    keys_file.provision(hub_toml.check(settings, base=folder, keys=False))  # as `hub keys`
    cfg = hub_toml.check({
        "hub": {"name": "bench", "store": "hub.sqlite", "slot_s": 10, "gate_s": 3},
        "aggregator": [{"key_id": 1}],
        "mqtt": {"host": "127.0.0.1", "port": port, "window": window, "reconnect_min_s": 0.05,
                 "reconnect_max_s": 0.2, "discovery_prefix": ""},
    }, base=folder)  # fmt: skip
    return Hub(cfg)


def emit(hub, i):
    return hub.events.emit("telemetry", device=1001 + i % 50, soc=50.0, remaining_kwh=5.0,
                           voltage=51.2, power_kw=1.5, health=0)  # fmt: skip


def outbox_add_cost(folder, n):
    """µs per add(), median of batches: NORMAL (the bridge's) and FULL."""
    out = {}
    for sync in ("NORMAL", "FULL"):
        box = Outbox(folder / ("cost-%s.sqlite" % sync))
        box.db.execute("PRAGMA synchronous = %s" % sync)
        times = []
        for i in range(n):
            t = time.perf_counter()
            box.add("1.%d" % i, "gridbid/bench/device/1001/telemetry", "x" * 160, True)
            times.append(time.perf_counter() - t)
        box.close()
        out[sync] = (statistics.median(times) * 1e6, sorted(times)[int(0.99 * n)] * 1e6)
    return out


async def throughput(folder, port, window, n):
    """Emit n events as fast as the loop allows; -> (emit µs median, events/s to PUBACK)."""
    hub = make_hub(folder, port, window)
    await hub.start_integrations()
    bridge = hub.integrations["mqtt"]
    while not bridge.online:
        await asyncio.sleep(0.01)
    costs = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        emit(hub, i)
        costs.append(time.perf_counter() - t)
        if i % 200 == 199:
            await asyncio.sleep(0)  # let PUBACKs in, as a real hub's loop does
    while bridge.handed or bridge.outbox.count():
        await asyncio.sleep(0.001)
    rate = n / (time.perf_counter() - t0)
    await hub.close()
    return statistics.median(costs) * 1e6, rate


async def replay(folder, port, n):
    """n events written with no broker; -> seconds from connect to all acknowledged."""
    dead = free_port()
    hub = make_hub(folder, dead, 100)
    await hub.start_integrations()
    for i in range(n):
        emit(hub, i)
    await hub.close()
    hub = make_hub(folder, port, 100)
    t0 = time.perf_counter()
    await hub.start_integrations()
    bridge = hub.integrations["mqtt"]
    while not bridge.online or bridge.handed or bridge.outbox.count():
        await asyncio.sleep(0.001)
    took = time.perf_counter() - t0
    await hub.close()
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        sys.exit("no mosquitto here (apt-get install mosquitto)")
    folder = Path(tempfile.mkdtemp(prefix="gridbid-bench-mqtt-"))
    port = free_port()
    broker = start_broker(folder, port)
    try:
        for sync, (median, p99) in outbox_add_cost(folder, 5000).items():
            print("outbox add, synchronous=%-6s median %6.1f us, p99 %7.1f us"
                  % (sync, median, p99))  # fmt: skip
        for window in (1, 20, 100):
            sub = folder / ("w%d" % window)
            sub.mkdir()
            cost, rate = asyncio.run(throughput(sub, port, window, args.events))
            print("window %3d: emit (listener) median %5.1f us, %6.0f events/s emit->PUBACK"
                  % (window, cost, rate))  # fmt: skip
        sub = folder / "replay"
        sub.mkdir()
        took = asyncio.run(replay(sub, port, args.events))
        print("replay of %d events written while the broker was away: %.2f s (%.0f events/s)"
              % (args.events, took, args.events / took))  # fmt: skip
        size = (sub / "gridbid-mqtt-outbox.sqlite").stat().st_size
        rows = sqlite3.connect(sub / "gridbid-mqtt-outbox.sqlite").execute(
            "SELECT count(*) FROM outbox").fetchone()[0]  # fmt: skip
        print("outbox after the replay: %d rows, file %.1f MB" % (rows, size / 1e6))
    finally:
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
