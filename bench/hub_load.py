"""The hub's ETP transport under load: 1,000 simulated batteries, one hub core.

The batteries are CPython simulators (bench/hub_load_devices.py) in --processes child
processes, each battery a TCP server on its own loopback address (127.77.x.y) speaking
authenticated ETP like the firmware. The hub runs in this process on one core: one
transport.links.DeviceLink per battery (--links-per-device), for --aggregators aggregator
identities, and a handler that does what a hub does with a frame: update the Registry,
match answers to bids, note failures (that side, its meters and the report are in
bench/hub_load_hub.py). Measured:

- throughput: frames handled per second of hub CPU, every battery sending BESSStatus
  every --status-ms (the firmware's 1 s gives only 1,000 frames/s, far from the hub's
  limit; 20 ms gives ~50,000) plus Query/Bid traffic to 1/20 of them every 100 ms;
- overload: one simulator core cannot saturate the hub one frame per write, so a short
  probe sends status in bursts of --overload-burst: the hub's ceiling, what it loses;
- bid -> BidAccept/BidReject (net of the --auction-ms window) and DeviceFailure fan-out
  latencies, p50/p99, at the firmware's 1 s status and under load, end to end; and where
  the time went, from the batteries' own timestamps and the kernel's receive stamp on
  their sockets: the hub and the network, and the batteries waiting for their shared CPU
  (a real battery has its own) are told apart;
- frames lost, and the hub's RSS with all links up; the hub's event-loop lag and GC
  pauses (it calls gc.freeze() once the links are up, as a hub should: --no-gc-freeze);
- how long the hub and the batteries waited for a CPU (/proc/PID/schedstat) and how much
  other work the machine did meanwhile: another test run on a shared machine shows in the
  latencies, and here is how much.

With two or more CPUs the hub is pinned to the first and the batteries to the others
(--no-pin: leave it to the kernel); on 2 cores the 1,000 batteries share one core,
which shows in the latencies. Keys are made per run and reach the children on stdin,
never the command line or the output. Figures to read, not assertions: the exit status
is 0 unless the run failed. About 30 s.

    .venv/bin/python bench/hub_load.py [--devices 1000] [--processes 4] [--seconds 10]
        [--status-ms 20] [--auction-ms 50] [--aggregators 4] [--links-per-device 1]
        [--overload-burst 4 (0: no probe)] [--profile]
"""

import argparse
import asyncio
import gc
import itertools
import json
import os
import pstats
import random
import resource
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hub_load_hub import (  # noqa: E402
    NAN,
    Hub,
    LagMonitor,
    decode_cost,
    measure,
    report,
    rss_kb,
    send_costs,
)

from protocol import message  # noqa: E402
from transport import links  # noqa: E402

HELPER_CMD = (sys.executable, str(Path(__file__).resolve().with_name("hub_load_devices.py")))
DEVICE_BASE = 100_000  # device ids (and key ids) are DEVICE_BASE + index
NOMINAL_STATUS_MS = 1000  # the firmware's BESSStatus period
TRAFFIC_EVERY_S = 0.1  # background Query/Bid traffic during the throughput window
TRAFFIC_SHARE = 20  # ... to 1/20 of the links each time
STARTED = time.perf_counter()


def log(text, *args):
    elapsed = time.perf_counter() - STARTED
    print("[%5.1f s] %s" % (elapsed, text % args), file=sys.stderr, flush=True)


def raise_nofile(wanted):
    """Raise the open-files limit; the battery processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def wait_until(condition, timeout, step=0.005):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


class Children:
    """The battery processes: JSON commands on their stdin, answers on their stdout."""

    def __init__(self, cmd=HELPER_CMD):
        self.cmd = cmd  # bench/soak.py runs bench/soak_devices.py's batteries
        self.procs = []

    async def start(self, chunks, aggregator_keys, args, cpus):
        common = {
            "aggregators": {str(a): k.hex() for a, k in aggregator_keys.items()},
            "auction_ms": args.auction_ms,
            "status_ms": NOMINAL_STATUS_MS,
            "max_peers": max(8, args.links_per_device),
            "cpus": cpus,
        }
        return await self.spawn(chunks, common)

    async def spawn(self, chunks, common):
        """One process per chunk of devices, each told common + its devices (on stdin:
        keys never travel on the command line) -> [[device id, address, port], ...]."""
        for chunk in chunks:
            # A session of its own: Ctrl-C reaches only us, and we clean up.
            proc = await asyncio.create_subprocess_exec(
                *self.cmd, stdin=PIPE, stdout=PIPE, limit=1 << 24, start_new_session=True
            )
            self.procs.append(proc)
            proc.stdin.write((json.dumps({**common, "devices": chunk}) + "\n").encode())
            await proc.stdin.drain()
        found = []
        for proc in self.procs:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise RuntimeError("a battery process exited before it was ready")
            found += json.loads(line)["ready"]
        return found

    def pids(self):
        return [proc.pid for proc in self.procs]

    async def tell(self, **cmd):
        data = (json.dumps(cmd) + "\n").encode()
        for proc in self.procs:
            proc.stdin.write(data)
        await asyncio.gather(*(proc.stdin.drain() for proc in self.procs))

    async def ask(self, what):
        await self.tell(cmd=what)
        lines = await asyncio.gather(
            *(asyncio.wait_for(proc.stdout.readline(), 10) for proc in self.procs)
        )
        return [json.loads(line)[what] for line in lines]

    async def trace(self):
        """-> ({(aggregator, bid id): (bid sent_ms, read, due, answer sent_ms)}, fail bursts)."""
        bids, fails = {}, []
        for got in await self.ask("trace"):
            for peer, bid_id, *times in got["bids"]:
                bids[(peer, bid_id)] = times
            fails += got["fails"]
        return bids, fails

    async def close(self, graceful):
        """After a clean run, ask every process to stop; then kill what is left."""
        if graceful:
            await self.tell(cmd="stop")
            for proc in self.procs:
                proc.stdin.close()
            await asyncio.wait([asyncio.create_task(p.wait()) for p in self.procs], timeout=5)
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def full_gc_ms():
    """How long a full collection takes now (the median of 3), ms."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[1]


def phase(**kw):
    """What a phase measured: Bid answers, DeviceFailure latencies, and so on."""
    empty = dict(answers=[], missing=0, failures=[], lasts=[], fail_missing=0)
    return argparse.Namespace(**(empty | kw))


async def bid_round(hub, rng, tag, into, timeout=5.0):
    """A Bid to every link at once; the answers and the bids unanswered go into `into`."""
    start = len(hub.answers)
    t0, c0 = time.perf_counter(), time.process_time()
    for link in hub.links:
        hub.bid(link, rng, tag)
    hub.queueing_ms.append((time.perf_counter() - t0) * 1000)
    # Every Bid written (at once by DeviceLink.send, unless a link's peer is not reading).
    await wait_until(lambda: all(link.queue.empty() for link in hub.links), timeout, step=0.001)
    hub.sending.append(((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000))
    await wait_until(lambda: not hub.pending, timeout)
    into.answers += hub.answers[start:]
    into.missing += len(hub.pending)
    hub.pending.clear()


async def failure_round(hub, children, into, timeout=5.0):
    """Every battery fails 250 ms from now; into `into` go the latencies (receipt - the
    frame's sent_ms: one machine, one clock), when the last came after then, how many never."""
    start, expected = len(hub.failures), len(hub.links)
    at_ms = links.now_ms() + 250
    await children.tell(cmd="fail", at_ms=at_ms)
    await wait_until(lambda: len(hub.failures) - start >= expected, timeout)
    got = hub.failures[start:]
    await children.tell(cmd="recover")
    into.failures += [received - sent for received, sent in got]
    into.lasts.append(max((received for received, _ in got), default=float("nan")) - at_ms)
    into.fail_missing += expected - len(got)


async def background_traffic(hub, rng):
    """Query + Bid to a rotating 1/TRAFFIC_SHARE of the links every TRAFFIC_EVERY_S."""
    links = hub.links
    size = max(1, len(links) // TRAFFIC_SHARE)
    at = 0
    for tick in itertools.count():
        for link in links[at : at + size]:
            try:
                link.send(message.query(hub.ids[link.aggregator].next(), link.device_id))
                hub.bid(link, rng, ("load", tick))
            except links.QueueFull:
                pass
        at = (at + size) % len(links)
        await asyncio.sleep(TRAFFIC_EVERY_S)


async def drain(hub, children):
    """Status off, so that every count is final -> (batteries' stats, hub frames, by kind)."""
    await children.tell(cmd="status_ms", ms=0)
    await asyncio.sleep(1.5)
    return await children.ask("stats"), hub.frames, list(hub.by_kind)


async def nominal_phase(hub, children, rng, args, monitor):
    """At the firmware's 1 s status: --rounds Bids to every battery, --failures fan-outs."""
    p = phase()
    for r in range(args.rounds):
        await bid_round(hub, rng, r, p)
        await asyncio.sleep(0.1)
    p.trace, _ = await children.trace()
    log("at 1 s status: %d bid rounds to all %d links done", args.rounds, len(hub.links))
    for _ in range(args.failures):
        await failure_round(hub, children, p)
        await asyncio.sleep(0.2)
    _, p.bursts = await children.trace()
    log("at 1 s status: %d DeviceFailure fan-outs done", args.failures)
    p.lags = monitor.take()
    p.usage = monitor.usage
    return p


async def load_phase(hub, children, rng, args, monitor):
    """BESSStatus every --status-ms plus Query/Bid traffic -> (throughput, latencies)."""
    await children.tell(cmd="status_ms", ms=args.status_ms, burst=args.burst)
    await asyncio.sleep(args.warmup)
    slower = " (profiling: slower)" if args.profile else ""
    log("throughput window: %.0f s, status every %d ms%s ...", args.seconds, args.status_ms, slower)
    start = len(hub.answers)
    traffic = asyncio.create_task(background_traffic(hub, rng))
    window = await measure(hub, children, args.seconds, monitor, args.profile)
    traffic.cancel()
    await wait_until(lambda: not hub.pending, 3)
    p = phase(
        lags=window.lags, usage=window.usage, answers=hub.answers[start:], missing=len(hub.pending)
    )
    hub.pending.clear()
    p.trace, _ = await children.trace()
    await failure_round(hub, children, p)
    _, p.bursts = await children.trace()
    log("under load: DeviceFailure fan-out done; status off, draining ...")
    return window, p


async def overload_probe(hub, children, args, monitor):
    """More than the hub reads, to find its ceiling and what it drops."""
    burst, seconds = args.overload_burst, args.overload_seconds
    log("overload: bursts of %d every %d ms for %.0f s ...", burst, args.status_ms, seconds)
    await children.tell(cmd="status_ms", ms=args.status_ms, burst=burst)
    await asyncio.sleep(1.0)
    o = await measure(hub, children, seconds, monitor)
    o.fails = phase()
    await failure_round(hub, children, o.fails, timeout=2.0)
    o.final, o.hub_frames, o.hub_by_kind = await drain(hub, children)
    return o


async def bench(args, cpus):
    aggregator_keys = {a: os.urandom(32) for a in range(1, args.aggregators + 1)}
    device_keys = {DEVICE_BASE + i: os.urandom(32) for i in range(args.devices)}
    chunks = [[] for _ in range(args.processes)]
    for i in range(args.devices):
        address = "127.77.%d.%d" % (i // 250, i % 250 + 1)
        key = device_keys[DEVICE_BASE + i].hex()
        chunks[i * args.processes // args.devices].append([i, DEVICE_BASE + i, address, key])
    rng = random.Random(args.seed)
    hub = Hub(device_keys, aggregator_keys)
    del device_keys
    n_links = args.devices * args.links_per_device
    children, monitor, ok = Children(), None, False
    R = argparse.Namespace(n_links=n_links, aggregators=args.aggregators, pinned=bool(cpus))
    R.sim_cpus = "CPU " + ",".join(map(str, cpus)) if cpus else "any CPU"
    try:
        log("starting %d batteries in %d processes ...", args.devices, args.processes)
        devices = await children.start(chunks, aggregator_keys, args, cpus)
        del chunks
        R.rss_before = rss_kb()
        log("batteries listening; opening %d links (%d aggregators) ...", n_links, args.aggregators)
        t0 = time.perf_counter()
        hub.open_links(devices, args.links_per_device)
        up = await wait_until(
            lambda: hub.responses >= n_links and all(link.connected.is_set() for link in hub.links),
            60,
        )
        if not up:
            raise RuntimeError(f"only {hub.responses} of {n_links} links answered the first Query")
        log("%d links up and answered in %.2f s", n_links, time.perf_counter() - t0)
        R.rss_links = rss_kb()
        R.full_gc_ms = full_gc_ms(), NAN
        if not args.no_gc_freeze:
            # What lives now (links, keys, registry) lives as long as the hub: out of the
            # collector's sight, so that no full collection walks it mid-auction.
            gc.freeze()
            R.full_gc_ms = R.full_gc_ms[0], full_gc_ms()
        monitor = LagMonitor(children.pids())
        await asyncio.sleep(0.5)
        R.nominal = await nominal_phase(hub, children, rng, args, monitor)
        R.throughput, R.loaded = await load_phase(hub, children, rng, args, monitor)
        R.final, R.hub_frames, R.hub_by_kind = await drain(hub, children)
        R.rss_end = rss_kb()
        R.over = None
        if args.overload_burst and args.overload_seconds > 0:
            R.over = await overload_probe(hub, children, args, monitor)
        ok = True
    finally:
        if monitor is not None:
            monitor.stop()
            R.gc_pauses = monitor.gc_pauses
        await hub.close()
        await children.close(graceful=ok)
    log("links closed, battery processes stopped")
    if args.profile:
        print("--- hub profile of the throughput window (cProfile, own time) ---", file=sys.stderr)
        pstats.Stats(R.throughput.profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    R.decode_us = decode_cost(1), decode_cost(8)
    R.send_us = send_costs()
    report(args, hub, R)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--devices", type=int, default=1000)
    add("--processes", type=int, default=4)
    add("--seconds", type=float, default=10.0, help="throughput window")
    add("--status-ms", type=int, default=20, help="BESSStatus period under load (firmware: 1000)")
    add("--burst", type=int, default=1, help="BESSStatus frames per write under load")
    add("--auction-ms", type=int, default=50)
    add("--aggregators", type=int, default=4, help="aggregator identities")
    add("--links-per-device", type=int, default=1, help="links (aggregators) per battery")
    add("--rounds", type=int, default=5, help="bid rounds at 1 s status")
    add("--failures", type=int, default=5, help="DeviceFailure fan-outs")
    add("--warmup", type=float, default=1.0)
    add("--overload-burst", type=int, default=4, help="overload probe's burst (0: no probe)")
    add("--overload-seconds", type=float, default=3.0)
    add("--seed", type=int, default=1)
    add("--no-pin", action="store_true", help="do not pin the hub to one CPU")
    add("--no-gc-freeze", action="store_true", help="no gc.freeze() once the links are up")
    add("--profile", action="store_true", help="cProfile the throughput window (slows it)")
    args = parser.parse_args(argv)
    if not 1 <= args.links_per_device <= args.aggregators:
        parser.error("--links-per-device must be 1..--aggregators")
    if args.devices > 250 * 256:
        parser.error("at most %d devices (127.77.x.y addresses)" % (250 * 256))
    args.processes = max(1, min(args.processes, args.devices))
    limit = raise_nofile(2 * args.devices * args.links_per_device + 256)
    cpus = []
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not args.no_pin and len(allowed) >= 2:
        os.sched_setaffinity(0, {allowed[0]})
        cpus = allowed[1:]
    hub_cpu, sim_cpus = (allowed[0], cpus) if cpus else ("any", "any")
    log("open files limit %d; hub on CPU %s, batteries on CPUs %s", limit, hub_cpu, sim_cpus)
    try:
        asyncio.run(bench(args, cpus))
    except KeyboardInterrupt:
        log("interrupted: links closed, battery processes killed")
        sys.exit(130)


if __name__ == "__main__":
    main()
