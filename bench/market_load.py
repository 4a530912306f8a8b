"""The market API under load: 1,000 simulated batteries, 3 aggregator processes.

The hub's market runs in this process, as `gridbid hub run` runs it (hub/market/
exchange.py behind hub/market/server.py on TCP, a SQLite store, the market maker and
the ledger), on one core. The aggregators are `gridbid aggregator run` processes, each
with its own identity, admission and value strategy. The batteries are the CPython
simulators of bench/hub_load_devices.py (their firmware's own auction and reserve code,
ETP with a pair key per aggregator, derived from the aggregators' master secrets as
enrollment gives them). Per slot: the hub lists every battery's offer to the
aggregators, each bids a layer per battery (one `bid` message of 1,000 layers), the
gate closes, the book clears, each buyer gets its fills, buys each from its battery
over ETP and reports Received and Confirmed. Measured, per slot:

- bid layers accepted per second of the hub's CPU (the exchange's work on `bid`
  messages: checks, the book, the store), and its wall time;
- gate closure -> fills at every aggregator (the aggregator's log line for them, on
  the same clock), the slowest aggregator per slot;
- gate closure -> every contract Confirmed at the hub, p50/p99/max.

Keys are made per run and reach the children on stdin or in 0600 files, never on the
command line or in the output. About 40 s.

    .venv/bin/python bench/market_load.py [--devices 1000] [--aggregators 3]
        [--slots 3] [--processes 2] [--auction-ms 50]
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT / "bench"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from hub_load import Children, raise_nofile  # noqa: E402

from aggregator import config as aggregator_config  # noqa: E402
from hub.config.keys_file import HubKeys  # noqa: E402
from hub.controls import Controls  # noqa: E402
from hub.events import Events  # noqa: E402
from hub.ledger import Ledger  # noqa: E402
from hub.market.exchange import LIMITS, Exchange  # noqa: E402
from hub.market.grid import SlotGrid  # noqa: E402
from hub.market.maker import MarketMaker  # noqa: E402
from hub.market.server import MarketServer  # noqa: E402
from hub.store import Store  # noqa: E402
from transport import secret_files  # noqa: E402

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO \S+: (\S+): filled by "
                   r"(\d+) batteries in (\S+) at")  # fmt: skip
SLOT_S, GATE_S = 12, 6


def say(text, *args):
    print(text % args, flush=True)


class Measured(Exchange):
    """The hub's exchange, timing its work on bids and when each contract is Confirmed."""

    def __init__(self, *args):
        super().__init__(*args)
        self.bid_cpu_s = self.bid_wall_s = self.contract_cpu_s = 0.0
        self.reports = 0
        self.layers = 0
        self.confirmed = {}  # slot -> [time.time() of each Confirmed]
        self.known = set()  # batteries in the store

    def received(self, participant, msg):
        if msg.get("type") != "bid":
            cpu = time.process_time()
            super().received(participant, msg)
            self.contract_cpu_s += time.process_time() - cpu
            reports = msg.get("reports") if msg.get("type") == "contracts" else [msg]
            reports = [r for r in reports or () if isinstance(r, dict)]
            self.reports += len(reports)
            for report in reports:  # answered (committed) now
                if report.get("state") == "Confirmed":
                    self.confirmed.setdefault(report.get("slot"), []).append(time.time())
            return
        cpu, wall = time.process_time(), time.perf_counter()
        super().received(participant, msg)
        self.bid_cpu_s += time.process_time() - cpu
        self.bid_wall_s += time.perf_counter() - wall
        self.layers += len(msg.get("layers") or ())


async def run(args, tmp):
    store = Store(tmp / "hub.sqlite", synchronous="NORMAL")
    grid = SlotGrid(SLOT_S, GATE_S, 0.0)
    maker = MarketMaker(store, "bench", SLOT_S, GATE_S, grid=grid)
    ledger = Ledger(store, SLOT_S, GATE_S, "bench", grid=grid)
    controls = Controls(store, Events())
    exchange = Measured(maker, ledger, store, controls, "bench", {}, 0)
    keys = HubKeys(os.urandom(32), os.urandom(32))
    server = await MarketServer(exchange, keys, "127.0.0.1", 0, max_sessions=16).start()

    masters = {k: os.urandom(32) for k in range(1, args.aggregators + 1)}
    chunks = [[] for _ in range(args.processes)]
    for i in range(args.devices):
        address = "127.78.%d.%d" % (i // 250, i % 250 + 1)
        chunks[i * args.processes // args.devices].append([i, 200_000 + i, address, ""])
    raise_nofile(4 * args.devices + 1000)
    children = Children()
    cpus = sorted(os.sched_getaffinity(0))
    say("starting %d batteries in %d processes, %d aggregators", args.devices, args.processes,
        args.aggregators)  # fmt: skip
    child_args = argparse.Namespace(auction_ms=args.auction_ms, links_per_device=1)
    devices = await children.start(chunks, masters, child_args, cpus[1:] or cpus)
    aggs, readers = [], []
    try:
        for key_id, master in masters.items():
            folder = tmp / ("agg%d" % key_id)
            folder.mkdir()
            identity = {"id": key_id, "name": "agg%d" % key_id, "master": master.hex()}
            secret_files.write(folder / "identity.json", identity)
            secret_files.write(folder / "market.json", aggregator_config.admission(
                "bench", "127.0.0.1", server.port, key_id, keys.market_key(key_id)))  # fmt: skip
            controls.admit(key_id, "agg%d" % key_id, "bench")
            (folder / "aggregator.toml").write_text(
                '[aggregator]\nidentity = "identity.json"\nstrategy = "value"\nvalue = 30.0\n'
                'spread = 4.0\nbidders = %d\nbind_timeout_s = 2.0\n\n[[market]]\n'
                'admission = "market.json"\n' % args.aggregators)  # fmt: skip
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gridbid.cli", "aggregator", "run", "--config",
                str(folder / "aggregator.toml"), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            aggs.append((process, []))
        readers += [asyncio.create_task(collect(p, lines)) for p, lines in aggs]
        deadline = time.monotonic() + 30
        while len(exchange.participants) < len(masters) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        say("aggregators connected: %d of %d", len(exchange.participants), len(masters))
        results = []
        for _ in range(args.slots):
            results.append(await one_slot(exchange, maker, ledger, devices, aggs))
        return results, exchange
    finally:
        for process, _lines in aggs:
            if process.returncode is None:
                process.send_signal(2)
        for process, _lines in aggs:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
        for reader in readers:
            reader.cancel()
        await server.close()
        await children.close(graceful=True)
        store.close()


async def collect(process, lines):
    async for raw in process.stdout:
        lines.append(raw.decode(errors="replace").rstrip())


async def one_slot(exchange, maker, ledger, devices, aggs):
    now = time.time()
    start = int(now // SLOT_S + 1) * SLOT_S
    if start - GATE_S - now < 3:
        start += SLOT_S
    name = maker.grid.slot_name("bench", start)
    offers = []
    with exchange.store.transaction():
        for index, (device_id, address, port) in enumerate(devices):
            kwh, reserve = 1.0 + index % 5, 12.0 + index % 7
            if device_id not in exchange.known:
                exchange.store.add_device(device_id, device_id, address)
                exchange.known.add(device_id)
            maker.offer(name, device_id, kwh, reserve)
            # each simulated battery listens on a port of its own
            offers.append({"device": device_id, "kwh": kwh, "reserve": reserve, "max_kw": 5.0,
                           "address": address, "port": port})  # fmt: skip
    cpu0, layers0 = exchange.bid_cpu_s, exchange.layers
    exchange.open_slot(name, start, start - GATE_S, offers, 18.0)
    await asyncio.sleep(max(0.0, start - GATE_S - time.time()))
    gate = time.time()
    result, trades = maker.clear(name, int(gate) + 1)
    deadline = time.monotonic() + 4.0
    exchange.close_slot(name, start, result, trades, ledger.bound(name))  # as Hub.settle:
    maker.record(name, result)  # fills out, then the trades recorded
    while not exchange.settled(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    contracts = exchange.finish(name)
    await asyncio.sleep(0.5)  # the aggregators' log lines
    fills_at = {}
    for _process, lines in aggs:
        for line in lines:
            m = STAMP.match(line)
            if m and m.group(5) == name:
                at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                fills_at[m.group(3)] = at + int(m.group(2)) / 1000
    confirmed = sorted(t - gate for t in exchange.confirmed.get(name, []))
    layers = exchange.layers - layers0
    cpu = exchange.bid_cpu_s - cpu0
    made = sum(1 for _c, state in contracts.values() if state == "Confirmed")
    row = {
        "layers": layers, "layers_per_cpu_s": layers / cpu if cpu else float("nan"),
        "fills_ms": max((t - gate) * 1000 for t in fills_at.values()) if fills_at else None,
        "buyers": len({b for b, _d in contracts}), "fills": len(contracts), "confirmed": made,
        "confirm_p50_ms": 1000 * statistics.median(confirmed) if confirmed else None,
        "confirm_p99_ms": 1000 * confirmed[int(0.99 * (len(confirmed) - 1))] if confirmed else None,
        "confirm_max_ms": 1000 * confirmed[-1] if confirmed else None,
    }  # fmt: skip
    say(
        "slot %s: %d layers, %.0f layers/s of hub CPU; gate -> fills at all %d buyers %s ms; "
        "%d of %d fills Confirmed, gate -> Confirmed p50 %s p99 %s max %s ms",
        name,
        layers,
        row["layers_per_cpu_s"],
        row["buyers"],
        fmt(row["fills_ms"]),
        made,
        row["fills"],
        fmt(row["confirm_p50_ms"]),
        fmt(row["confirm_p99_ms"]),
        fmt(row["confirm_max_ms"]),
    )
    return row


def fmt(value):
    return "-" if value is None else "%.0f" % value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--aggregators", type=int, default=3)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="battery processes")
    parser.add_argument("--auction-ms", type=int, default=50, help="batteries' auction window")
    args = parser.parse_args(argv)
    if not 1 <= args.devices <= LIMITS["layers_per_message"] * 20:
        parser.error("--devices 1..%d" % (LIMITS["layers_per_message"] * 20))
    with tempfile.TemporaryDirectory(prefix="market-load-") as tmp:
        rows, exchange = asyncio.run(run(args, Path(tmp)))
    layer_rates = [r["layers_per_cpu_s"] for r in rows]
    fills = [r["fills_ms"] for r in rows if r["fills_ms"] is not None]
    p99 = [r["confirm_p99_ms"] for r in rows if r["confirm_p99_ms"] is not None]
    say(
        "%d slots, %d batteries, %d aggregator processes: bid layers accepted %.0f-%.0f/s per "
        "hub core (goal >= 20,000); gate -> fills at every aggregator %s-%s ms (goal <= 50); "
        "gate -> every contract Confirmed p99 %s-%s ms (goal <= 1000); hub CPU on bids %.2f s",
        len(rows),
        args.devices,
        args.aggregators,
        min(layer_rates),
        max(layer_rates),
        fmt(min(fills) if fills else None),
        fmt(max(fills) if fills else None),
        fmt(min(p99) if p99 else None),
        fmt(max(p99) if p99 else None),
        exchange.bid_cpu_s,
    )
    say("hub CPU on %d contract reports: %.2f s", exchange.reports, exchange.contract_cpu_s)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
