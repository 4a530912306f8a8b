"""The status page's WebSocket fan-out under load: --clients pages on the hub's /ws.

A real hub.service.Hub (real store and events, no batteries: nothing trades) runs the
web integration (hub/integrations/web) in a child process; --processes client processes open the
WebSocket connections. Once all are connected, the hub emits --events events (a
clearing with --trades trades, ~0.8 kB as JSON) every --interval-ms through
hub.events.emit, exactly as a slot's clearing goes out. Measured:

- end to end: from emit (the event's own "at", same clock) to the client reading it,
  p50/p99/max over every (event, client) pair; the clients' own CPU is in it (a real
  page has a CPU of its own: on a 2-core machine 500 clients share one core);
- the hub side: how long emit() itself takes (publish: encode once, queue per client;
  this is all the market waits for), and how long until every client's queue is
  drained into its socket (the fan-out's work on the hub's loop);
- clients dropped as too slow (there should be none), events lost.

The kernel places the processes (--pin: the hub on the first CPU, the clients on the
others; on a machine shared with other work, that CPU's other load then lands on the
hub). Figures to read, not assertions; exit status 0
unless the run failed. About 15 s.

    .venv/bin/python bench/ws_fanout.py [--clients 500] [--processes 2] [--events 100]
        [--interval-ms 100] [--trades 10] [--queue 256] [--pin]
"""

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# --- the hub side ------------------------------------------------------------------------


async def serve(args):
    from hub.config import hub_toml, keys_file
    from hub.service import Hub

    with tempfile.TemporaryDirectory(prefix="ws-fanout-") as tmp:
        folder = Path(tmp)
        settings = {
            "hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json"},
            "aggregator": [{"key_id": 1, "name": "agg1"}],
            # every page from 127.0.0.1: no per-address cap below the clients
            "web": {
                "port": 0,
                "ws_queue": args.queue,
                "max_per_address": args.clients + 16,
                "max_connections": max(1024, args.clients + 16),
            },
        }
        keys_file.provision(hub_toml.check(settings, base=folder, keys=False))  # `hub keys`
        cfg = hub_toml.check(settings, base=folder)
        hub = Hub(cfg)
        await hub.start_integrations()
        web = hub.integrations["web"]
        print("url %s" % web.url, flush=True)
        clients = web.fanout.clients
        deadline = time.monotonic() + 60
        while len(clients) < args.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        connected = len(clients)
        gc.freeze()  # as hub.run does once its links are up: no full collections of them
        emit_s, emit_cpu_s, drain_s = [], [], []
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        trades = [{"buyer": "agg%d" % (i % 3 + 1), "device": 1001 + i, "kwh": 0.25}
                  for i in range(args.trades)]  # fmt: skip
        for n in range(args.events):
            began, cpu = time.perf_counter(), time.thread_time()
            hub.events.emit(
                "clearing", slot="rt15gate5.hub.%d" % (1_800_000_000 + 900 * n), start=0,
                price=18.25, volume_kwh=2.5, reserve=15.5, offers=10, bid_layers=30,
                trades=trades,
            )  # fmt: skip
            emit_s.append(time.perf_counter() - began)
            emit_cpu_s.append(time.thread_time() - cpu)
            while any(not c.queue.empty() for c in list(clients)):
                await asyncio.sleep(0)
            drain_s.append(time.perf_counter() - began)
            await asyncio.sleep(max(0.0, args.interval_ms / 1000 - drain_s[-1]))
        hub.events.emit("control", name="bench.done", value=True, by="bench")
        await asyncio.sleep(1.0)
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches
        report = {"connected": connected, "dropped": web.fanout.dropped, "emit_s": emit_s,
                  "emit_cpu_s": emit_cpu_s, "drain_s": drain_s, "preempted": switches}  # fmt: skip
        await hub.close()
        print("report " + json.dumps(report), flush=True)


# --- the clients --------------------------------------------------------------------------


async def clients(args):
    import websockets

    url = args.url.replace("http://", "ws://") + "ws"
    stamps = []
    ready = asyncio.Event()
    opened = 0

    async def one(gate):
        nonlocal opened
        async with gate:
            ws = await websockets.connect(url, max_queue=None, compression=None)
        opened += 1
        if opened == args.count:
            ready.set()
        async with ws:
            async for raw in ws:
                stamps.append((time.time(), raw))
                if "bench.done" in raw:
                    return

    gate = asyncio.Semaphore(50)  # connect in waves, not all at once
    tasks = [asyncio.create_task(one(gate)) for _ in range(args.count)]
    await ready.wait()
    print("connected", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks), args.events * args.interval_ms / 1000 + 60)
    latencies = []
    for at, raw in stamps:
        event = json.loads(raw)
        if event["kind"] == "clearing":
            latencies.append(at - event["at"])
    print("latencies " + json.dumps(latencies), flush=True)


# --- the run --------------------------------------------------------------------------------


async def run(args):
    me = [sys.executable, str(Path(__file__).resolve())]
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    common = ["--clients", str(args.clients), "--events", str(args.events),
              "--interval-ms", str(args.interval_ms)]  # fmt: skip
    hub = await asyncio.create_subprocess_exec(
        *me, "--role", "hub", "--trades", str(args.trades), "--queue", str(args.queue), *common,
        stdout=PIPE, limit=2**24,
    )  # fmt: skip
    if pin:
        os.sched_setaffinity(hub.pid, cpus[:1])
    url = (await hub.stdout.readline()).decode().split()[1]
    shares = [args.clients // args.processes + (i < args.clients % args.processes)
              for i in range(args.processes)]  # fmt: skip
    children = []
    for count in shares:
        child = await asyncio.create_subprocess_exec(
            *me, "--role", "clients", "--url", url, "--count", str(count), *common,
            stdout=PIPE, limit=2**26,  # the latencies come as one line
        )  # fmt: skip
        if pin:
            os.sched_setaffinity(child.pid, cpus[1:])
        children.append(child)
    latencies = []
    for child in children:
        async for line in child.stdout:
            if line.startswith(b"latencies "):
                latencies += json.loads(line[10:])
        await child.wait()
    report = None
    async for line in hub.stdout:
        if line.startswith(b"report "):
            report = json.loads(line[7:])
    await hub.wait()
    if report is None or any(c.returncode for c in children):
        print("the run failed (hub %s, clients %s)"
              % (hub.returncode, [c.returncode for c in children]))  # fmt: skip
        return 1
    ms = [x * 1000 for x in latencies]
    expected = args.events * report["connected"]
    print("ws fan-out: %d clients on /ws (%d processes), %d events of ~%d trades every %d ms%s"
          % (report["connected"], args.processes, args.events, args.trades, args.interval_ms,
             ", hub pinned to CPU %d" % cpus[0] if pin else ""))  # fmt: skip
    print("  emit -> client read: p50 %.1f ms  p99 %.1f ms  max %.1f ms  (target p99 <= 100 ms)"
          % (statistics.median(ms), percentile(ms, 0.99), max(ms)))  # fmt: skip
    emit_us = [x * 1e6 for x in report["emit_s"]]
    cpu_us = [x * 1e6 for x in report["emit_cpu_s"]]
    drain = [x * 1000 for x in report["drain_s"]]
    print("  hub: emit() p50 %.0f us p99 %.0f us wall, p99 %.0f us CPU (what the market waits"
          " for); all queues written p50 %.1f ms p99 %.1f ms"
          % (statistics.median(emit_us), percentile(emit_us, 0.99), percentile(cpu_us, 0.99),
             statistics.median(drain), percentile(drain, 0.99)))  # fmt: skip
    print("  the hub was preempted %d times meanwhile; load average %.2f (other work on this"
          " machine shows in the tail)" % (report["preempted"], os.getloadavg()[0]))  # fmt: skip
    print("  received %d of %d (lost %d); clients dropped as too slow: %d"
          % (len(ms), expected, expected - len(ms), report["dropped"]))  # fmt: skip
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--trades", type=int, default=10, help="trades per clearing event")
    parser.add_argument("--queue", type=int, default=256, help="[web] ws_queue")
    parser.add_argument(
        "--pin", action="store_true", help="hub on the first CPU, clients on the rest"
    )
    parser.add_argument("--role", choices=("run", "hub", "clients"), default="run",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    role = {"run": run, "hub": serve, "clients": clients}[args.role]
    return asyncio.run(role(args)) or 0


if __name__ == "__main__":
    sys.exit(main())
