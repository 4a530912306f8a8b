"""The hub side of bench/hub_load.py: the hub under test (its links and what it does with
every frame), what is measured of it (loop lag, GC pauses, a window's frames and CPU, RSS,
who waited for a CPU and what else ran, the costs of a frame without sockets), and the
report; its last line sums up (README.md quotes it).
"""

import argparse
import asyncio
import cProfile
import gc
import os
import resource
import time

from protocol import auth, frame, message, pairing
from transport import discovery, links

THROUGHPUT_TARGET = 50_000  # frames per second of hub CPU
BID_P99_TARGET_MS = 20  # net of the auction window
FAILURE_P99_TARGET_MS = 20
DEVICE_ID = 100_000  # any battery's id, for the costs without sockets
NAN = float("nan")
FAIL = message.DEVICE_FAILURE
BID_KWH = 1.0


class Hub:
    """The aggregators' links and what the hub does with every frame."""

    def __init__(self, device_keys, aggregator_keys):
        """aggregator_keys: each aggregator identity's master secret. Its pair key with a
        battery is derived from it on first use, as a hosted aggregator's is
        (aggregator/identity.py); bench/hub_load_devices.py derives the same. device_keys:
        the batteries (their own keys seal nothing: every frame is a pair's)."""
        # One codec (own key id, own pair keys, own replay windows) per aggregator identity.
        self.codecs = {
            a: frame.Codec(pairing.DerivedKeyring(master, pairing.LABEL_ETP), key_id=a)
            for a, master in aggregator_keys.items()
        }
        self.ids = {a: message.MessageIds(links.now_ms()) for a in aggregator_keys}
        self.registry = discovery.Registry()
        self.links = []
        self.frames, self.by_kind = 0, [0] * 10
        self.batches = 0  # runs of frames from one link in a row: ~ reads that gave frames
        self._last = None
        # (aggregator, bid id) -> (send() ms, device id, price, reserve, auction tag)
        self.pending = {}
        self.answers = []  # (raw ms, battery->hub ms, kind, (aggregator, bid id), pending entry)
        self.unmatched = 0
        self.failures = []  # (receipt ms, sent_ms)
        self.responses = 0
        self.queueing_ms = []  # how long building and queueing a round's Bids took
        self.sending = []  # (wall ms, hub CPU ms) until a round's Bids were all written

    def open_links(self, devices, per_device):
        """Link i speaks for aggregator i mod N (and the next ones, per_device > 1)."""
        aggregators = list(self.codecs)
        for index, (device_id, address, port) in enumerate(devices):
            for j in range(per_device):
                aggregator = aggregators[(index + j) % len(aggregators)]
                codec = self.codecs[aggregator]
                link = links.DeviceLink(
                    codec, address, port, self.handle, queue_size=64, on_connect=self.hello,
                    device_id=device_id,
                )  # fmt: skip
                link.aggregator = aggregator
                self.links.append(link.start())

    def hello(self, link):
        """A battery closes a session that does not authenticate: ask for its offer."""
        link.send(message.query(self.ids[link.aggregator].next(), link.device_id))

    def handle(self, link, got):
        self.frames += 1
        if link is not self._last:
            self.batches += 1
            self._last = link
        msg = got.message
        kind = msg[0]
        self.by_kind[kind] += 1
        self.registry.seen(msg[2], link.address, msg, got.sent_ms)
        if kind == message.BESS_STATUS:
            return
        if kind == message.BID_ACCEPT or kind == message.BID_REJECT:
            key = (link.aggregator, got.reply_to)
            sent = self.pending.pop(key, None)
            if sent is None:
                self.unmatched += 1
                return
            now = time.time_ns() / 1e6
            self.answers.append((now - sent[0], now - got.sent_ms, kind, key, sent))
        elif kind == message.DEVICE_FAILURE:
            self.failures.append((time.time_ns() / 1e6, got.sent_ms))
        elif kind == message.QUERY_RESPONSE:
            self.responses += 1

    def bid(self, link, rng, tag):
        """A Bid to link's battery, 1 in 4 below its reserve; one tag, one battery: one auction."""
        info = self.registry.devices[link.device_id]
        reserve = info.reserve
        if rng.random() < 0.25:
            price = round(reserve * 0.9, 4)
        else:
            price = round(reserve + rng.uniform(0.1, 4.0), 4)
        msg = message.bid(self.ids[link.aggregator].next(), link.device_id, price, BID_KWH)
        entry = (time.time_ns() / 1e6, link.device_id, price, reserve, tag, BID_KWH, info.offer_kwh)
        self.pending[(link.aggregator, msg.message_id)] = entry
        link.send(msg)

    async def close(self):
        await asyncio.gather(*(link.close() for link in self.links))


def cpu_snapshot(pids):
    """-> (wall s, the machine's CPU-s in processes, in interrupts, stolen, {pid: (s on a
    CPU, s runnable but waiting for one)}) from /proc/stat and /proc/PID/schedstat (Linux;
    zeros elsewhere)."""
    procs = irqs = steal = 0.0
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, stolen = map(
                int, f.readline().split()[1:9]
            )
        hz = os.sysconf("SC_CLK_TCK")
        procs, irqs, steal = (user + nice + system) / hz, (irq + softirq) / hz, stolen / hz
    except (OSError, ValueError):
        pass
    tasks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                ran, waited = f.read().split()[:2]
            tasks[pid] = int(ran) / 1e9, int(waited) / 1e9
        except (OSError, ValueError):
            pass
    return time.perf_counter(), procs, irqs, steal, tasks


def cpu_use(before, after, hub_pid):
    """What two cpu_snapshot()s say: who ran, who waited for a CPU, what else ran."""
    b, a = before[4], after[4]
    ran = {p: a[p][0] - b[p][0] for p in a if p in b}
    waited = {p: a[p][1] - b[p][1] for p in a if p in b}
    sims = [p for p in ran if p != hub_pid]
    return argparse.Namespace(
        wall=after[0] - before[0],
        hub_ran=ran.get(hub_pid, NAN),
        hub_waited=waited.get(hub_pid, NAN),
        sims_ran=sum(ran[p] for p in sims),
        sims_waited=sum(waited[p] for p in sims),
        # The machine's busy time less ours: another test run on the machine, say, and
        # interrupt work no process of ours was charged for. Ticks against our exact run
        # times: within ~10% of the busy time either way, so only large values say much.
        others=after[1] + after[2] - before[1] - before[2] - sum(ran.values()),
        irqs=after[2] - before[2],
        steal=after[3] - before[3],
    )


class LagMonitor:
    """How late the hub's event loop runs a 5 ms timer: how busy the hub is.
    Also times the hub's garbage collections (gc.callbacks), and, with each take(),
    the CPU the hub and the batteries (pids) used and waited for since the last one."""

    def __init__(self, pids=()):
        self.lags = []
        self.gc_pauses = []  # (generation, ms)
        self._gc_start = None
        gc.callbacks.append(self._gc)
        self._pids = [os.getpid(), *pids]
        self._cpu = cpu_snapshot(self._pids)
        self.usage = None  # cpu_use() over the span the last take() closed
        self._task = asyncio.create_task(self._run())

    def _gc(self, phase, info):
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start is not None:
            ms = (time.perf_counter() - self._gc_start) * 1e3
            self.gc_pauses.append((info["generation"], ms))

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.lags.append((loop.time() - t - 0.005) * 1000)

    def take(self):
        """-> the lags since the last take(); self.usage: the CPU used over that span."""
        lags, self.lags = self.lags, []
        now = cpu_snapshot(self._pids)
        self.usage, self._cpu = cpu_use(self._cpu, now, self._pids[0]), now
        return lags

    def stop(self):
        self._task.cancel()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)


async def measure(hub, children, seconds, monitor, profile=False):
    """Frames handled, reads, hub CPU and wall time over `seconds`; the batteries' stats
    before and after; the loop's lags; with profile, a cProfile of the window."""
    w = argparse.Namespace(stats0=await children.ask("stats"), profiler=None)
    monitor.take()
    if profile:
        w.profiler = cProfile.Profile()
        w.profiler.enable()
    f0, b0, s0 = hub.frames, hub.batches, hub.by_kind[message.BESS_STATUS]
    c0, w0, t0 = time.process_time(), time.perf_counter(), os.times()
    await asyncio.sleep(seconds)
    c1, w1, t1 = time.process_time(), time.perf_counter(), os.times()
    w.frames, w.reads = hub.frames - f0, hub.batches - b0
    w.status = hub.by_kind[message.BESS_STATUS] - s0
    if profile:
        w.profiler.disable()
    w.cpu, w.wall = c1 - c0, w1 - w0
    w.user, w.system = t1.user - t0.user, t1.system - t0.system
    w.lags = monitor.take()
    w.usage = monitor.usage
    w.stats1 = await children.ask("stats")
    return w


def rss_kb():
    """(ru_maxrss, VmRSS) of this process, KB."""
    with open("/proc/self/status") as f:
        now = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, now


def decode_cost(per_read, n=60_000):
    """CPU us per frame of what a DeviceLink does with bytes already read: StreamDecoder,
    Codec.open and Hub.handle (Registry.seen included), per_read frames per feed()."""
    master = os.urandom(32)  # aggregator 1's; the battery holds their pair key
    scratch = Hub({DEVICE_ID: None}, {1: master})
    pair = auth.Keyring({1: pairing.derive(master, pairing.LABEL_ETP, DEVICE_ID)})
    sealer = frame.Codec(pair, key_id=DEVICE_ID, peer=1)
    ids, at = message.MessageIds(links.now_ms()), links.now_ms()
    status = message.bess_status
    frames = [
        sealer.seal(status(ids.next(), DEVICE_ID, 10.0, 5.0, 50.0, 0, 48.0, 0.0), at)
        for _ in range(n)
    ]
    chunks = [b"".join(frames[i : i + per_read]) for i in range(0, n, per_read)]
    link = argparse.Namespace(aggregator=1, address="127.77.0.1")
    decoder, handle = frame.StreamDecoder(scratch.codecs[1]), scratch.handle
    c0 = time.process_time()
    for chunk in chunks:
        decoder.feed(chunk)
        for got in decoder.frames(links.now_ms()):
            handle(link, got)
    return 1e6 * (time.process_time() - c0) / max(1, scratch.frames)


def send_costs(n=5000):
    """(message.bid(), Codec.seal()) in us, the best of 3: this machine is noisy."""
    # As an aggregator seals: its pair key with the battery, from its master secret.
    keyring = pairing.DerivedKeyring(os.urandom(32), pairing.LABEL_ETP)
    codec = frame.Codec(keyring, key_id=1, peer=DEVICE_ID)
    ids = message.MessageIds(links.now_ms())
    build, seal = [], []
    for _ in range(3):
        c0 = time.process_time()
        msgs = [message.bid(ids.next(), DEVICE_ID, 12.5, 1.0) for _ in range(n)]
        c1 = time.process_time()
        at = links.now_ms()
        for msg in msgs:
            codec.seal(msg, at)
        build.append(1e6 * (c1 - c0) / n)
        seal.append(1e6 * (time.process_time() - c1) / n)
    return min(build), min(seal)


def pct(values, p):
    if not values:
        return NAN
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def p50_99(values):
    return f"p50 {pct(values, 50):.1f} / p99 {pct(values, 99):.1f}"


def met(value, target):
    return "MET" if value == value and value <= target else "NOT MET"  # NaN: not met


def sent(stats, kind=None):
    """Frames the battery processes wrote (of one message type), from their stats."""
    if kind is None:
        return sum(sum(s["sent"]) for s in stats)
    return sum(s["sent"][kind] for s in stats)


def wrong_answers(answers):
    """Answers that are not what the battery's auction must say (firmware/auction.py):
    bids at or above the reserve accepted best first while offered energy is left."""
    auctions = {}  # (device id, auction tag) -> [(price, kind, reserve, kWh, offer)]
    for _raw, _leg, kind, _key, (_ms, device, price, reserve, tag, kwh, offer) in answers:
        auctions.setdefault((device, tag), []).append((price, kind, reserve, kwh, offer))
    wrong = 0
    for bids in auctions.values():
        left = bids[0][4]
        for price, kind, reserve, kwh, _offer in sorted(bids, key=lambda b: -b[0]):
            accept = price >= reserve and left >= 0.0001
            if accept:
                left -= min(kwh, left)
            wrong += (kind == message.BID_ACCEPT) != accept
    return wrong


def bid_lines(label, phase, auction_ms):
    """Bid -> answer latencies, and where the time went -> (net p50, net p99, hub's p99,
    net p99 less the batteries' own waits)."""
    answers = phase.answers
    raw, leg = [a[0] for a in answers], [a[1] for a in answers]
    net = [r - auction_ms for r in raw]
    accepts = sum(1 for a in answers if a[2] == message.BID_ACCEPT)
    print(
        f"bid -> answer {label:<16} {len(answers):5d} answers ({accepts} accepts, "
        f"{len(answers) - accepts} rejects, {wrong_answers(answers)} wrong, {phase.missing} "
        f"missing): raw {p50_99(raw)} ms, net of the {auction_ms} ms window {p50_99(net)} ms; "
        f"battery's send -> hub handler {p50_99(leg)} ms"
    )
    # Joined with the batteries' own timestamps: (bid sent_ms, the kernel's receive stamp
    # on the battery's socket, read, auction due, answer sent_ms), one clock.
    names = ("hub send() -> in the battery's socket", "-> battery read it", "-> auction due")
    names += ("-> answer sealed", "-> hub handler", "hub's own part (1st + 5th)")
    names += ("batteries' waits (2nd + 4th)", "net less those")
    parts = [[] for _ in names]
    for _raw, leg, _kind, key, entry in answers:
        if key in phase.trace:
            _bid_sent, arrived, read, due, answer_sent = phase.trace[key]
            to_socket, waited, late = arrived - entry[0], read - arrived, max(0, answer_sent - due)
            values = (to_socket, waited, due - read, answer_sent - due, leg, to_socket + leg)
            values += (waited + late, _raw - auction_ms - waited - late)
            for part, value in zip(parts, values):
                part.append(value)
    where = "; ".join(f"{n} {pct(p, 50):.1f} / {pct(p, 99):.1f}" for n, p in zip(names, parts))
    print(f"  where it went (p50 / p99 ms, {len(parts[0])} joined): {where}")
    return pct(net, 50), pct(net, 99), pct(parts[5], 99), pct(parts[7], 99)


def failure_lines(label, phase, devices):
    """DeviceFailure fan-out latencies, and when the batteries sent them -> (p50, p99)."""
    fails = phase.failures
    print(
        f"DeviceFailure {label:<16} {len(fails):5d} frames ({phase.fail_missing} missing) from "
        f"{devices} batteries: sent_ms -> hub handler {p50_99(fails)} / max "
        f"{max(fails, default=NAN):.1f} ms; last one in {max(phase.lasts, default=NAN):.1f} ms "
        "after the trigger time"
    )
    if phase.bursts:  # (trigger ms, first DeviceFailure's sent_ms, last one's)
        first = min(b[1] - b[0] for b in phase.bursts)
        last = max(b[2] - b[0] for b in phase.bursts)
        print(f"  the batteries sealed them {first} to {last} ms after the trigger")
    else:
        print("  no bursts traced")
    return pct(fails, 50), pct(fails, 99)


def overload_line(args, R):
    """The overload probe's line -> its part of the summary line."""
    o = R.over
    total = sent(o.final) - sent(R.final)
    lost = total - (o.hub_frames - R.hub_frames)
    lost_pct = 100 * lost / max(1, total)
    fails = sent(o.final, FAIL) - sent(R.final, FAIL)
    fails_lost = fails - (o.hub_by_kind[FAIL] - R.hub_by_kind[FAIL])
    offered = (sent(o.stats1) - sent(o.stats0)) / o.wall
    print(
        f"overload       BESSStatus in bursts of {args.overload_burst} every {args.status_ms} "
        f"ms: offered {offered:.0f} frames/s, hub handled {o.frames / o.cpu:.0f} frames/s per "
        f"CPU second ({int(100 * o.cpu / o.wall)}% busy, ~{o.frames / max(1, o.reads):.1f} "
        f"frames per read); {lost} of {total} frames sent never reached a handler "
        f"({lost_pct:.0f}%), among them {fails_lost} of {fails} DeviceFailures (p99 of those "
        f"that came: {pct(o.fails.failures, 99):.1f} ms)"
    )
    return (
        f"; overloaded: {o.frames / o.cpu:,.0f} frames/s per core but {lost_pct:.0f}% of frames "
        f"and {fails_lost} of {fails} DeviceFailures lost"
    )


def report(args, hub, R):
    t = R.throughput
    per_cpu, busy = t.frames / t.cpu, int(100 * t.cpu / t.wall)
    offered = (sent(t.stats1) - sent(t.stats0)) / t.wall
    sims_cpu = sum(s["cpu_s"] for s in t.stats1) - sum(s["cpu_s"] for s in t.stats0)
    us, per_read = 1e6 * t.cpu / t.frames, t.frames / max(1, t.reads)
    print(
        f"setup          {args.devices} batteries in {args.processes} processes, {R.n_links} "
        f"links, {R.aggregators} aggregator identities; hub pinned to one CPU: "
        f"{'yes' if R.pinned else 'no'}"
    )
    print(
        f"throughput     {t.frames} frames in {t.wall:.2f} s wall, {t.cpu:.2f} s hub CPU (hub "
        f"{busy}% busy): {per_cpu:.0f} frames/s per hub CPU second, {t.frames / t.wall:.0f} per "
        f"wall second; hub CPU {100 * t.user / (t.user + t.system):.0f}% user, "
        f"{100 * t.system / (t.user + t.system):.0f}% kernel, {us:.1f} us per frame"
    )
    print(
        f"               offered by the batteries {offered:.0f} frames/s (BESSStatus every "
        f"{args.status_ms} ms; {100 * t.status / max(1, t.frames):.0f}% of handled frames were "
        f"status); batteries used {sims_cpu:.2f} CPU-s in {t.wall:.2f} s "
        f"({sum(s['late_ticks'] for s in t.stats1)} late status ticks, "
        f"{sum(s['skipped'] for s in t.stats1)} status skipped on full buffers); "
        f"~{per_read:.1f} frames per read"
    )
    d1, d8 = R.decode_us
    print(
        "               without sockets (same decoder, codec and handler, in a loop): "
        f"{d1:.1f} us per frame fed one at a time, {d8:.1f} us fed 8 at a time; so of the "
        f"{us:.1f} us per frame above, ~{d1:.1f} us is decoding, verifying and dispatching and "
        f"~{(us - d1) * per_read:.0f} us per read ({per_read:.1f} frames) is the rest: the "
        "event loop, recv() and the kernel"
    )
    over_text = "" if R.over is None else overload_line(args, R)
    for label, lags in (("at 1 s status", R.nominal.lags), ("under load", R.loaded.lags)):
        late = f"{p50_99(lags)} / max {max(lags, default=NAN):.1f} ms"
        print(f"hub loop lag  {label:<16} 5 ms timer late by {late}")
    for label, cpu in (("at 1 s status", R.nominal.usage), ("under load", t.usage)):
        print(
            f"CPU            {label:<16} {cpu.wall:.1f} s: hub ran {cpu.hub_ran:.2f} s and "
            f"waited {1e3 * cpu.hub_waited:.0f} ms for a CPU; batteries ran {cpu.sims_ran:.2f} s, "
            f"waited {1e3 * cpu.sims_waited:.0f} ms ({args.processes} processes on "
            f"{R.sim_cpus}); the machine's other work {cpu.others:.2f} CPU-s (other "
            f"processes, and interrupts not charged to ours; interrupts in all {cpu.irqs:.2f}), "
            f"hypervisor steal {cpu.steal:.2f} s"
        )
    for generation in (0, 1, 2):
        pauses = [ms for g, ms in R.gc_pauses if g == generation]
        print(
            f"hub GC         generation {generation}: {len(pauses)} collections, p50 "
            f"{pct(pauses, 50):.2f} / max {max(pauses, default=0.0):.1f} ms"
        )
    print(
        f"               a full collection with the links up: {R.full_gc_ms[0]:.1f} ms; after "
        f"gc.freeze() (what lived then is left out): {R.full_gc_ms[1]:.1f} ms"
    )
    bid50, bid99, hub99, less99 = bid_lines("at 1 s status", R.nominal, args.auction_ms)
    wall_ms = pct([w for w, _c in hub.sending], 50)
    cpu_ms = pct([c for _w, c in hub.sending], 50)
    build_us, seal_us = R.send_us
    print(
        f"  the hub's send path: the {R.n_links} Bids of a round built and sent (message.bid "
        f"+ DeviceLink.send) in {pct(hub.queueing_ms, 50):.1f} ms, all written in {wall_ms:.1f} "
        f"ms wall, {cpu_ms:.1f} ms CPU (medians of {len(hub.sending)} rounds): "
        f"{1000 * cpu_ms / R.n_links:.1f} us per Bid, of which message.bid() {build_us:.1f}, "
        f"Codec.seal() {seal_us:.1f}, the rest the socket write (the kernel's loopback delivery "
        "to the battery included) and the bench's bookkeeping"
    )
    _, load_bid99, load_hub99, load_less99 = bid_lines("under load", R.loaded, args.auction_ms)
    fail50, fail99 = failure_lines("at 1 s status", R.nominal, args.devices)
    _, load_fail99 = failure_lines("under load", R.loaded, args.devices)
    final, got = R.final, R.hub_by_kind
    lost = sent(final) - R.hub_frames
    spans = (R.nominal.usage, t.usage)
    other_pct = 100 * sum(u.others for u in spans) / sum(u.wall for u in spans)
    waited_pct = 100 * sum(u.hub_waited for u in spans) / sum(u.wall for u in spans)
    answers_lost = sum(sent(final, k) - got[k] for k in (message.BID_ACCEPT, message.BID_REJECT))
    print(
        f"frames lost    {lost} of {sent(final)} sent by the batteries never reached a handler "
        f"(status {sent(final, message.BESS_STATUS) - got[message.BESS_STATUS]}, answers "
        f"{answers_lost}, failures {sent(final, FAIL) - got[FAIL]}); {hub.unmatched} answers "
        f"matched no bid; batteries dropped {sum(s['bad'] for s in final)} bad frames"
    )
    before, idle, end = R.rss_before[1], R.rss_links[1], R.rss_end
    print(
        f"hub RSS        ru_maxrss {end[0] / 1024:.1f} MB, VmRSS {end[1] / 1024:.1f} MB with "
        f"{R.n_links} links up ({before / 1024:.1f} MB before the links, {idle / 1024:.1f} MB "
        f"with them idle: {(idle - before) / R.n_links:.1f} KB per link); batteries' processes "
        f"{max(s['rss_kb'] for s in final) / 1024:.1f} MB each"
    )
    print(
        f"hub_load: {args.devices:,} devices: {per_cpu:,.0f} msgs/s per core at {offered:,.0f}/s "
        f"offered (target {THROUGHPUT_TARGET:,}: {met(-per_cpu, -THROUGHPUT_TARGET)}; hub "
        f"{busy}% busy), bid->accept p50 {bid50:.0f} / p99 {bid99:.0f} ms net of the "
        f"{args.auction_ms} ms window (target p99 {BID_P99_TARGET_MS} ms: "
        f"{met(bid99, BID_P99_TARGET_MS)}; less the simulated batteries' waits for their "
        f"shared CPU p99 {less99:.0f} ms, the hub's own part p99 {hub99:.0f} ms; under load "
        f"p99 {load_bid99:.0f} / {load_less99:.0f} / {load_hub99:.0f} ms), "
        f"DeviceFailure fan-out p50 {fail50:.0f} / p99 {fail99:.0f} ms (target p99 "
        f"{FAILURE_P99_TARGET_MS} ms: {met(fail99, FAILURE_P99_TARGET_MS)}; under load p99 "
        f"{load_fail99:.0f} ms: {met(load_fail99, FAILURE_P99_TARGET_MS)}), {lost:,} frames "
        f"lost, hub RSS {end[0] / 1024:.0f} MB{over_text}; the hub waited for a CPU "
        f"{waited_pct:.1f}% of the time (the machine's other work ~{max(0, other_pct):.0f}% of "
        "a CPU)"
    )
