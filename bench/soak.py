"""Soak: the real hub (`gridbid hub run`, its own process) for --minutes with --batteries
batteries trading, the status page polled and /ws watched; does its memory stay flat?

- the hub: hub.toml with --aggregators hosted aggregators (value and adaptive bidders,
  alternately), the web page ([web]), --slot-s slots; SQLite store, keys and identities
  made for the run in a temporary folder;
- the batteries: CPython simulated batteries (bench/soak_devices.py: the firmware's
  Auction and reserve, authenticated ETP on TCP and on the multicast group, contracts
  that complete and are receipted to the hub), not the firmware on the VM (a MicroPython
  process and a CPython Modbus simulator per battery: too heavy for a thousand on two
  cores); --processes processes, each battery on its own loopback address (127.77.x.y)
  and the hub's device_port;
- the page: one client GETs what the page loads (status, slots, the newest slot's book,
  prices, aggregators, devices, contracts, competition) every --poll-s; --ws clients read
  every /ws event.

Every --sample-s it prints a sample of the hub process: RSS (/proc/PID/status VmRSS),
open fds (/proc/PID/fd), its CPU share, and the event-loop lag as the latency of a probe
(a GET of an unknown /api path: a 404 from the hub's own loop, little work, so its
latency is mostly the wait for the loop; an upper bound, as this process's own loop and
the machine's other work are in it too; one probe a second, the window's median and max).
At the end, after a warm-up (the first --warmup share of the run): the slope of RSS
(MB/min) and of fds (per min), the RSS range as +-% of its mean, and the verdict against
issue 17's goal: RSS within +-10 % of its mean and fds flat (their fitted change over the
run within +-2 % of their mean, or 5 fds). Exit status 0 unless the run failed; the
verdict is a figure to read.

    .venv/bin/python bench/soak.py [--batteries 100] [--minutes 10] [--processes 2]
        [--aggregators 2] [--slot-s 10] [--ws 2] [--poll-s 5] [--json FILE]
        [--tracemalloc FILE (the hub writes its top-20 growth there: gridbid/memtrace.py)]
        [--keep-log FILE] [--hub-root CHECKOUT (another checkout's hub: before/after)]
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hub_load import DEVICE_BASE, Children, raise_nofile  # noqa: E402

from hub.config import hub_toml, keys_file  # noqa: E402
from simulator.fleet import free_group_port, free_port  # noqa: E402

DEVICES_CMD = (sys.executable, str(Path(__file__).resolve().with_name("soak_devices.py")))
GRIDBID = (sys.executable, "-m", "gridbid.cli")
RSS_BAND_PCT, FD_BAND_PCT, FD_BAND_MIN = 10.0, 2.0, 5
STARTED = time.monotonic()


def log(text, *args):
    print("[%6.1f s] %s" % (time.monotonic() - STARTED, text % args), file=sys.stderr, flush=True)


def toml(sections):
    """{"hub": {...}, "web": {...}, "aggregator": [{...}, ...]} -> TOML text (strings and
    numbers: JSON writes them as TOML reads them)."""
    lines = []
    for name, value in sections.items():
        for table in value if isinstance(value, list) else [value]:
            lines.append(("[[%s]]" if isinstance(value, list) else "[%s]") % name)
            lines += ["%s = %s" % (k, json.dumps(v)) for k, v in table.items()]
    return "\n".join(lines) + "\n"


def site(folder, args):
    """hub.toml, its keys file and the hosted aggregators' identities in folder.
    -> (config path, web URL, the batteries' config but their devices)."""
    group_addr = "239.255.77.%d" % (os.getpid() % 250 + 1)  # not another run's group
    aggregators = [{"key_id": k, "name": "agg%d" % k, "value": 22.0, "spread": 4.0,
                    "margin": 1.0, "strategy": "adaptive" if k % 2 == 0 else "value"}
                   for k in range(1, args.aggregators + 1)]  # fmt: skip
    web_port = free_port()
    settings = {
        "hub": {"name": "soak", "store": "hub.sqlite", "keys_file": "hub-keys.json",
                "group_addr": group_addr, "group_port": free_group_port(),
                "interface": "127.0.0.1", "device_port": free_port(), "market_port": 0,
                "slot_s": args.slot_s, "gate_s": args.gate_s, "discovery_s": 3.0,
                "answer_s": 1.0, "bind_timeout_s": 2.0},
        "aggregator": aggregators,
        "web": {"host": "127.0.0.1", "port": web_port},
    }  # fmt: skip
    config = folder / "hub.toml"
    config.write_text(toml(settings))
    checked = hub_toml.load(config, keys=False)  # the file as the hub will read it
    keys_file.provision(checked)  # `gridbid hub keys`: the master, group and identities
    secrets = json.loads((folder / "hub-keys.json").read_text())
    masters = {str(a["key_id"]): json.loads(Path(a["identity_file"]).read_text())["master"]
               for a in checked["aggregators"]}  # fmt: skip
    hub = settings["hub"]
    batteries = {
        "aggregators": masters, "hub": secrets["master"], "group": secrets["group"],
        "group_addr": group_addr, "group_port": hub["group_port"], "port": hub["device_port"],
        "auction_ms": 300, "status_ms": 1000, "contract_s": args.slot_s, "max_peers": 8,
    }  # fmt: skip
    return config, "http://127.0.0.1:%d/" % web_port, batteries


# --- the hub process, sampled -------------------------------------------------------------


def proc_sample(pid):
    """-> (RSS MB, open fds, CPU seconds) of a live process, from /proc."""
    with open("/proc/%d/status" % pid) as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir("/proc/%d/fd" % pid))
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, fds, cpu_s


class Page:
    """The page's reader: REST polls, /ws clients, and the loop-lag probe."""

    def __init__(self, url, args):
        self.url, self.args = url, args
        self.http = httpx.AsyncClient(base_url=url, timeout=30)
        self.polls = self.poll_errors = self.events = self.ws_reconnects = 0
        self.probes = []  # probe latencies (ms) since the last sample

    async def ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (await self.http.get("api/status")).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        return False

    async def poll(self):
        paths = ["api/status", "api/slots?limit=30", "api/prices", "api/aggregators",
                 "api/devices", "api/contracts?limit=25", "api/competition"]  # fmt: skip
        while True:
            try:
                for path in paths:
                    got = await self.http.get(path)
                    got.raise_for_status()
                    if path.startswith("api/slots") and got.json()["items"]:
                        slot = got.json()["items"][0]["slot"]
                        (await self.http.get("api/slots/" + slot)).raise_for_status()
                self.polls += 1
            except (httpx.HTTPError, ValueError, KeyError):
                self.poll_errors += 1
            await asyncio.sleep(self.args.poll_s)

    async def watch(self):
        url = self.url.replace("http://", "ws://") + "ws"
        while True:
            try:
                async with websockets.connect(url, max_queue=None) as ws:
                    async for _raw in ws:
                        self.events += 1
            except (OSError, websockets.WebSocketException):
                pass
            self.ws_reconnects += 1  # dropped as too slow (1013), or the hub is gone
            await asyncio.sleep(1.0)

    async def probe(self):
        while True:
            began = time.perf_counter()
            try:
                await self.http.get("api/soak-probe")
                self.probes.append((time.perf_counter() - began) * 1000)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1.0)

    def take_probes(self):
        probes, self.probes = self.probes, []
        return probes


def fit(points):
    """Least-squares slope of [(x, y)] (y per unit of x)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def verdict(samples, warmup_s):
    """The figures after the warm-up -> dict (issue 17's goal: flat RSS and fds)."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 3:
        return {"error": "too few samples after the warm-up"}
    rss = [s["rss_mb"] for s in after]
    fds = [s["fds"] for s in after]
    minutes = [(s["t_s"] / 60) for s in after]
    mean_rss, mean_fds = statistics.fmean(rss), statistics.fmean(fds)
    rss_slope = fit(list(zip(minutes, rss)))
    fd_slope = fit(list(zip(minutes, fds)))
    span_min = minutes[-1] - minutes[0]
    fd_change = fd_slope * span_min
    lags = [x for s in after for x in s.get("lag_raw", [])]
    r = {
        "samples": len(after), "from_s": after[0]["t_s"], "to_s": after[-1]["t_s"],
        "rss_start_mb": rss[0], "rss_end_mb": rss[-1], "rss_mean_mb": mean_rss,
        "rss_slope_mb_per_min": rss_slope,
        "rss_min_pct": 100 * (min(rss) - mean_rss) / mean_rss,
        "rss_max_pct": 100 * (max(rss) - mean_rss) / mean_rss,
        "fds_start": fds[0], "fds_end": fds[-1], "fds_min": min(fds), "fds_max": max(fds),
        "fds_slope_per_min": fd_slope, "fds_fitted_change": fd_change,
        "lag_p50_ms": statistics.median(lags) if lags else None,
        "lag_p99_ms": sorted(lags)[int(0.99 * (len(lags) - 1))] if lags else None,
        "lag_max_ms": max(lags) if lags else None,
    }  # fmt: skip
    r["rss_flat"] = max(abs(r["rss_min_pct"]), abs(r["rss_max_pct"])) <= RSS_BAND_PCT
    r["fds_flat"] = abs(fd_change) <= max(FD_BAND_MIN, FD_BAND_PCT / 100 * mean_fds)
    r["goal_met"] = r["rss_flat"] and r["fds_flat"]
    return r


# --- the run ------------------------------------------------------------------------------


async def start_batteries(args, batteries):
    """-> Children, its batteries listening and registered on the group."""
    chunks = [[] for _ in range(args.processes)]
    for i in range(args.batteries):
        address = "127.77.%d.%d" % (i // 250, i % 250 + 1)
        chunks[i * args.processes // args.batteries].append([i, DEVICE_BASE + i, address, ""])
    children = Children(DEVICES_CMD)
    await children.spawn(chunks, batteries)
    return children


async def sample_loop(hub, page, args, samples):
    began = time.monotonic()
    _, _, cpu0 = proc_sample(hub.pid)
    wall0 = began
    while True:
        await asyncio.sleep(args.sample_s)
        if hub.returncode is not None:
            return
        rss, fds, cpu = proc_sample(hub.pid)
        now = time.monotonic()
        probes = page.take_probes()
        sample = {
            "t_s": round(now - began, 1), "rss_mb": round(rss, 2), "fds": fds,
            "cpu_pct": round(100 * (cpu - cpu0) / (now - wall0), 1),
            "lag_p50_ms": round(statistics.median(probes), 2) if probes else None,
            "lag_max_ms": round(max(probes), 2) if probes else None,
            "ws_events": page.events, "polls": page.polls, "poll_errors": page.poll_errors,
            "lag_raw": [round(x, 2) for x in probes],
        }  # fmt: skip
        cpu0, wall0 = cpu, now
        samples.append(sample)
        log("RSS %7.2f MB  fds %5d  hub CPU %5.1f %%  probe p50 %s ms max %s ms  /ws events %d"
            "  polls %d (errors %d)", rss, fds, sample["cpu_pct"], sample["lag_p50_ms"],
            sample["lag_max_ms"], page.events, page.polls, page.poll_errors)  # fmt: skip


async def soak(args):
    samples, result = [], {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="gridbid-soak-") as tmp:
        folder = Path(tmp)
        config, url, batteries = site(folder, args)
        log("%d batteries in %d processes ...", args.batteries, args.processes)
        children = await start_batteries(args, batteries)
        del batteries  # the keys
        hub_root = Path(args.hub_root or ROOT).resolve()  # another checkout: before/after
        env = dict(os.environ, PYTHONPATH=str(hub_root))
        if args.tracemalloc:
            env.update(GRIDBID_TRACEMALLOC=str(Path(args.tracemalloc).resolve()),
                       GRIDBID_TRACEMALLOC_S=str(args.tracemalloc_s))  # fmt: skip
        with open(folder / "hub.log", "wb") as hub_log:
            hub = await asyncio.create_subprocess_exec(
                *GRIDBID, "hub", "run", "--config", str(config), cwd=hub_root, env=env,
                stdout=hub_log, stderr=hub_log, start_new_session=True,
            )  # fmt: skip
        page = Page(url, args)
        tasks = []
        try:
            if not await page.ready():
                raise RuntimeError("the hub's page did not answer")
            log("hub pid %d up (%s); the page polled every %g s, %d /ws clients, for %g min",
                hub.pid, url, args.poll_s, args.ws, args.minutes)  # fmt: skip
            tasks = [asyncio.create_task(page.poll()), asyncio.create_task(page.probe())]
            tasks += [asyncio.create_task(page.watch()) for _ in range(args.ws)]
            sampler = asyncio.create_task(sample_loop(hub, page, args, samples))
            tasks.append(sampler)
            await asyncio.wait(
                [sampler, asyncio.create_task(hub.wait())],
                timeout=args.minutes * 60,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if hub.returncode is not None:
                raise RuntimeError("the hub exited (%s) during the run" % hub.returncode)
            result["status"] = (await page.http.get("api/status")).json()["totals"]
            result["batteries"] = await children.ask("stats")
        finally:
            for task in tasks:
                task.cancel()
            await page.http.aclose()
            if hub.returncode is None:
                hub.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(hub.wait(), 20)
                except asyncio.TimeoutError:
                    hub.kill()
                    await hub.wait()
            await children.close(graceful=hub.returncode == 0)
            text = (folder / "hub.log").read_text(errors="replace")
            result["hub_log"] = {"lines": text.count("\n"), "warnings": text.count(" WARNING "),
                                 "errors": text.count(" ERROR "),
                                 "tracebacks": text.count("Traceback")}  # fmt: skip
            if args.keep_log:
                Path(args.keep_log).write_text(text)
    result["samples"] = samples
    result["verdict"] = verdict(samples, args.warmup * args.minutes * 60)
    return result


def report(r):
    v, b = r["verdict"], r.get("batteries") or []
    print("soak: %d simulated batteries, %d hosted aggregators, %d s slots, the page polled "
          "every %g s, %d /ws clients, %g min" % (r["args"]["batteries"],
          r["args"]["aggregators"], r["args"]["slot_s"], r["args"]["poll_s"], r["args"]["ws"],
          r["args"]["minutes"]))  # fmt: skip
    if "status" in r:
        t = r["status"]
        print("  market: %d slots cleared, %d contracts, %.3f kWh; batteries: %d contracts made, "
              "%d completed, %d hub Queries heard" % (t["cleared_slots"], t["contracts"],
              t["kwh"], sum(x["contracts"] for x in b), sum(x["completed"] for x in b),
              max((x["queries"] for x in b), default=0)))  # fmt: skip
    print(
        "  hub log: %(lines)d lines, %(warnings)d warnings, %(errors)d errors, "
        "%(tracebacks)d tracebacks" % r["hub_log"]
    )
    if "error" in v:
        print("  " + v["error"])
        return
    print("  after the warm-up (%.0f-%.0f s, %d samples):" % (v["from_s"], v["to_s"], v["samples"]))
    print("  RSS %.1f -> %.1f MB, slope %+.3f MB/min, range %+.1f %% / %+.1f %% of the mean "
          "%.1f MB" % (v["rss_start_mb"], v["rss_end_mb"], v["rss_slope_mb_per_min"],
          v["rss_min_pct"], v["rss_max_pct"], v["rss_mean_mb"]))  # fmt: skip
    print("  fds %d -> %d (min %d, max %d), slope %+.2f /min" % (v["fds_start"], v["fds_end"],
          v["fds_min"], v["fds_max"], v["fds_slope_per_min"]))  # fmt: skip
    if v["lag_p50_ms"] is not None:
        print("  loop lag (probe latency): p50 %.1f ms, p99 %.1f ms, max %.1f ms"
              % (v["lag_p50_ms"], v["lag_p99_ms"], v["lag_max_ms"]))  # fmt: skip
    print(
        "  goal (RSS within +-%.0f %%, fds flat): %s (RSS %s, fds %s)"
        % (
            RSS_BAND_PCT,
            "MET" if v["goal_met"] else "NOT MET",
            "flat" if v["rss_flat"] else "not flat",
            "flat" if v["fds_flat"] else "not flat",
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--batteries", type=int, default=100)
    add("--minutes", type=float, default=10.0)
    add("--processes", type=int, default=2, help="battery processes")
    add("--aggregators", type=int, default=2, help="hosted aggregators (1..8)")
    add("--slot-s", type=int, default=10, help="slot length, s")
    add("--gate-s", type=int, default=None, help="gate closure before a slot (default slot/2)")
    add("--ws", type=int, default=2, help="/ws clients")
    add("--poll-s", type=float, default=5.0, help="the page's REST poll period")
    add("--sample-s", type=float, default=10.0)
    add("--warmup", type=float, default=0.2, help="share of the run left out of the verdict")
    add("--json", help="write the samples and the verdict to this file")
    add("--keep-log", help="write the hub's log to this file")
    add("--tracemalloc", help="the hub writes its top-20 memory growth to this file")
    add("--tracemalloc-s", type=float, default=60.0)
    add("--hub-root", help="run the hub of this checkout (e.g. the code before a fix)")
    args = parser.parse_args(argv)
    args.gate_s = args.slot_s // 2 if args.gate_s is None else args.gate_s
    if not 1 <= args.batteries <= 250 * 256 or not 1 <= args.aggregators <= 8:
        parser.error("--batteries 1..64000, --aggregators 1..8")
    args.processes = max(1, min(args.processes, args.batteries))
    raise_nofile(4 * args.batteries * (args.aggregators + 1) + 1024)  # the hub inherits it
    try:
        result = asyncio.run(soak(args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
