"""`gridbid demo`: the hub trades batteries' energy between competing aggregators.

Everything runs here, on 127.0.0.x, with embedded defaults: N batteries (the
firmware on the MicroPython VM, each with a simulated meter, BMS and inverter
over Modbus), the hub (hub/service.py: its market maker, the market API and a
SQLite store in a temporary folder), and M aggregators, each its own OS process
(`gridbid aggregator run`) with its own identity, strategy and files, as
independent companies run them. Slots are seconds long. Per slot the hub
queries the batteries, the aggregators bid over the market API, the market
clears at one price, each buyer buys its share from each battery over ETP with
its own pair key, and the batteries run the contracts and report what their
meters counted. Keys are made for the run and never shown.

Aggregators: 1 = the single utility (it posts each battery's reserve); 2 or
more compete: value bidders (a resale value drawn per offer, less a margin)
and, every second one, an adaptive bidder that learns from clearing prices.
At the end it prints what sold and at what price, next to the mean reserve of what
sold: what an informed single buyer posting reserves would have paid for the same
kWh. That is a computed figure, not a run; `gridbid experiment` measures the
baselines on the hub's market. While it runs, the hub's status page (hub/integrations/web) shows
the auctions live on http://127.0.0.1:8080/ (--web-port; 0: none).
"""

import asyncio
import collections
import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from aggregator import config as aggregator_config
from aggregator import wallet
from hub.config import hub_toml
from hub.service import Hub, StartError
from simulator import lacks_sim_extra, vm
from simulator.fleet import Fleet, free_port
from transport import secret_files

LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ [\w.]+: ")  # gridbid/logs.py's
SHOWN = ("accepted", "contract ", "DEVICE FAILURE", "CONFIG ERROR", "Traceback")


def add_arguments(parser):
    parser.add_argument("--devices", type=int, default=5, help="batteries (default 5)")
    parser.add_argument(
        "--aggregators", type=int, default=3, help="buyers (default 3; 1 = utility)"
    )
    parser.add_argument("--slots", type=int, default=3, help="market slots to trade (default 3)")
    parser.add_argument("--slot-s", type=int, default=6, help="slot length, s (default 6)")
    parser.add_argument("--reserve", type=float, default=14.0, help="batteries' floor, c/kWh")
    parser.add_argument("--seed", type=int, default=None, help="seed for values and batteries")
    parser.add_argument(
        "--web-port", type=int, default=8080,
        help="the hub's status page on http://127.0.0.1:PORT/ (default 8080; 0: none)",
    )  # fmt: skip


def run(args):
    for name, low, high in (("devices", 1, 20), ("aggregators", 1, 8), ("slots", 1, 1000),
                            ("slot_s", 4, 3600), ("web_port", 0, 65535)):  # fmt: skip
        if not low <= getattr(args, name) <= high:
            print(
                "error: --%s must be %d..%d" % (name.replace("_", "-"), low, high), file=sys.stderr
            )
            return 2
    if lacks_sim_extra("demo"):
        return 2
    with HubLines():
        return asyncio.run(Demo(args).main())


def say(who, text):
    print("%-9s| %s" % (who, text), flush=True)


class HubLines(logging.Handler):
    """The hub's log lines (hub.*, aggregator.*, transport.*) as the demo's `hub |` lines,
    instead of the root logger's timestamped ones, while the demo runs (gridbid/logs.py
    keeps the simulated devices' pymodbus quiet)."""

    NAMES = ("hub", "aggregator", "transport")

    def emit(self, record):
        say("hub", record.getMessage())

    def __enter__(self):
        for name in self.NAMES:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.propagate = False
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        for name in self.NAMES:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.propagate = True


def aggregators(count, seed):
    if count == 1:
        return [{"key_id": 1, "name": "utility", "strategy": "utility"}]
    rng = random.Random(seed)
    return [
        {
            "key_id": k,
            "name": "agg%d" % k,
            "strategy": "adaptive" if k % 2 == 0 else "value",
            "value": round(rng.uniform(18.0, 20.0), 2),
            "spread": 4.0,
            "margin": 1.0,
            "bidders": count,
        }  # fmt: skip
        for k in range(1, count + 1)
    ]


class Demo:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.contracts = {"hub": set(), "batteries": set()}
        self.processes = {}  # aggregator name -> (its process, the task relaying its lines)

    async def main(self):
        args = self.args
        gate_s = max(2, args.slot_s // 3)
        with tempfile.TemporaryDirectory(prefix="gridbid-demo-") as tmp:
            agg_ids = range(1, args.aggregators + 1)
            fleet = Fleet(
                tmp,
                aggregators=agg_ids,
                reserve_floor=args.reserve,
                slot_s=args.slot_s,
                gate_s=gate_s,
                slots_ahead=1,
                poll_ms=100,
                tick_ms=100,
                # Seconds-long slots: the 100 ms beats of meter, tick and inverter are a
                # few % of a contract, so these batteries call 90 % delivered a success.
                success_share=0.9,
            )
            hub, echo = None, None
            try:
                for _ in range(args.devices):
                    await fleet.add(sim_settings={"soc_pct": self.rng.uniform(55.0, 95.0)})
                say("demo", "starting %d batteries, each with a simulated meter, BMS and inverter"
                    % args.devices)  # fmt: skip
                await asyncio.gather(*(d.start() for d in fleet.devices))
                for device in fleet.devices:
                    say("bat %d" % device.device_id,
                        "ready on %s (%s)" % (device.address, device.runtime))  # fmt: skip
                echo = asyncio.create_task(self.echo(fleet))
                hub = Hub(self.config(fleet, Path(tmp), gate_s), seed=args.seed)
                specs = self.admit(hub, fleet, Path(tmp))
                try:
                    await hub.start_integrations()
                except StartError as exc:  # e.g. another demo's page: run without ours
                    if exc.integration != "web":
                        raise
                    say("demo", "no status page (%s; --web-port N: another port)" % exc.reason)
                    hub.cfg["integrations"].pop("web")  # it failed first: nothing started
                    await hub.start_integrations()
                await hub.start_market()
                await self.start_aggregators(specs)
                summaries = await hub.run(args.slots)
                await self.wait_for_reports(hub)
                self.summary(hub, summaries)
                await self.settled(hub)
            finally:
                if echo is not None:
                    echo.cancel()
                await self.stop_aggregators()
                if hub is not None:
                    await hub.close()
                await fleet.close()
        return 0

    def admit(self, hub, fleet, tmp):
        """Each aggregator in a folder of its own (identity, wallet, admission, aggregator.toml),
        admitted to the hub's market as `gridbid hub admit` does. -> [(name, folder, spec)]"""
        made = []
        for spec in aggregators(self.args.aggregators, self.args.seed):
            key_id, name = spec.pop("key_id"), spec.pop("name")
            folder = tmp / name
            folder.mkdir()
            fleet.identity(folder / "identity.json", key_id, name)
            secret_files.write(folder / "market-hub.json", aggregator_config.admission(
                hub.cfg["name"], "127.0.0.1", hub.cfg["market_port"], key_id,
                hub.cfg["keys"].market_key(key_id)))  # fmt: skip
            hub.controls.admit(key_id, name, "demo")
            wallet.create(folder / "wallet.json")  # its own: margin in the hub's market
            lines = ["[aggregator]", 'identity = "identity.json"', 'wallet = "wallet.json"']
            lines += ["%s = %s" % (k, json.dumps(v)) for k, v in spec.items()]
            lines += ["", "[[market]]", 'admission = "market-hub.json"']
            (folder / "aggregator.toml").write_text("\n".join(lines) + "\n")
            made.append((name, folder, spec))
        return made

    async def start_aggregators(self, specs):
        """Start each as `gridbid aggregator run`; -> once each is trading."""
        for name, folder, spec in specs:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gridbid.cli", "aggregator", "run", "--config",
                str(folder / "aggregator.toml"), cwd=vm.ROOT, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,  # Ctrl-C is ours
            )  # fmt: skip
            ready = asyncio.get_running_loop().create_future()
            self.processes[name] = (process, asyncio.create_task(self.relay(name, process, ready)))
            say("demo", "aggregator %s: its own process (pid %d), %s strategy, folder %s"
                % (name, process.pid, spec["strategy"], folder.name))  # fmt: skip
            await asyncio.wait_for(ready, 30)

    async def relay(self, name, process, ready):
        """An aggregator's log lines as the demo's `agg... |` lines."""
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if "trading in market" in line and not ready.done():
                ready.set_result(True)
            say(name, LOG_PREFIX.sub("", line))
        if not ready.done():
            ready.set_exception(RuntimeError("aggregator %s exited at start" % name))

    async def stop_aggregators(self):
        """Ctrl-C to each aggregator process, as a terminal gives it; kill what lingers."""
        for process, _relay in self.processes.values():
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGINT)
        for process, relay in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
            await asyncio.gather(relay, return_exceptions=True)
        self.processes.clear()

    def config(self, fleet, tmp, gate_s):
        port = self.args.web_port  # the hub prints the page's URL
        web = {"web": {"host": "127.0.0.1", "port": port}} if port else {}
        keys_file = fleet.hub_keys(tmp / "hub-keys.json")
        return hub_toml.check({
            "hub": {"name": "hub", "store": str(tmp / "hub.sqlite"), "keys_file": str(keys_file),
                    "group_addr": fleet.group_addr, "group_port": fleet.group_port,
                    "interface": "127.0.0.1", "device_port": fleet.tcp_port,
                    "slot_s": self.args.slot_s, "gate_s": gate_s, "discovery_s": 1.5,
                    "bind_timeout_s": 1.5, "market_bind": "127.0.0.1",
                    "market_port": free_port()},
            **web,
            # Pay for delivered energy on an in-process Solana chain (LiteSVM): it makes its
            # mint, funds the aggregators and makes owners' keys (0600 files, never shown).
            "settlement": {"backend": "litesvm", "wallets": str(tmp / "wallets"),
                           "batch_s": self.args.slot_s, "poll_s": 0.5},
        })  # fmt: skip

    async def settled(self, hub):
        """Settlement: each slot's final contracts are one batch, paid on the chain."""
        settlement = hub.integrations.get("settlement")
        if settlement is None:
            return
        status = await settlement.flush(timeout_s=self.args.slot_s + 15)
        balances = await settlement.balances()
        say("demo", "settled %d contracts in %d batches: %d transactions on LiteSVM, "
            "%.4f cents paid (%d waiting)"
            % (status["contracts"], sum(status["batches"].values()),
               status["transactions"].get("finalized", 0), status["amount"] / 10**4,
               status["waiting"]))  # fmt: skip
        for device, credits in balances["owners"].items():
            say("demo", "owner of battery %d received %.4f cents" % (device, credits * 100))
        for name, account in sorted(balances["aggregators"].items()):
            say("demo", "%s's margin: %.2f credits deposited, %.4f cents paid from it, %.2f "
                "free (the clearing account holds %.2f)" % (name, account["deposited"],
                account["paid"] * 100, account["free"], balances["clearing"]))  # fmt: skip

    async def echo(self, fleet):
        seen = {d.device_id: 0 for d in fleet.devices}
        while True:
            for device in fleet.devices:
                for line in device.lines[seen[device.device_id] :]:
                    if any(word in line for word in SHOWN):
                        say("bat %d" % device.device_id, line)
                    if line.startswith("contract ") and " with aggregator " in line:
                        self.contracts["batteries"].add(line.split()[1])
                seen[device.device_id] = len(device.lines)
            await asyncio.sleep(0.05)

    async def wait_for_reports(self, hub):
        """The last slot's contracts run after the hub stops trading: wait for their reports."""
        deadline = time.time() + self.args.slot_s * 2 + 3
        while time.time() < deadline:
            live = [
                r for r in hub.store.contracts(limit=1000) if r["state"] in ("Confirmed", "Active")
            ]
            if not live:
                return
            await asyncio.sleep(0.2)

    def summary(self, hub, summaries):
        rows = hub.store.contracts(limit=10000)
        self.contracts["hub"] = {r["id"] for r in rows}
        sold = [(s["price"], s["volume_kwh"], s["reserve"]) for s in summaries if s["price"]]
        offered = sum(s["offered_kwh"] for s in summaries)
        say(
            "demo",
            "--- %d slots, %d cleared, %d contracts ---" % (len(summaries), len(sold), len(rows)),
        )
        states = collections.Counter(row["state"] for row in rows)
        say(
            "demo", "contract states: %s" % ", ".join("%s %d" % kv for kv in sorted(states.items()))
        )
        if sold:
            kwh = sum(v for _p, v, _r in sold)
            price = sum(p * v for p, v, _r in sold) / kwh
            reserve = sum(r * v for _p, v, r in sold) / kwh
            say(
                "demo",
                "the market with %d aggregator(s): %.4f of %.4f kWh offered sold, at "
                "%.2f c/kWh on average" % (self.args.aggregators, kwh, offered, price),
            )
            say("demo", "the batteries' reserves: %.2f c/kWh (each slot's mean over kWh "
                "offered, weighted by kWh sold; the market paid %+.1f%%): about what a buyer "
                "posting each reserve would pay; computed, not run (`gridbid experiment` "
                "measures the baselines)"
                % (reserve, 100 * (price - reserve) / reserve))  # fmt: skip
        ours, theirs = self.contracts["hub"], self.contracts["batteries"]
        if ours == theirs:
            say("demo", "batteries and hub hold the same %d contract ids" % len(ours))
        else:
            say("demo", "MISMATCH: only the hub has %s; only the batteries %s"
                % (sorted(ours - theirs), sorted(theirs - ours)))  # fmt: skip
        say(
            "demo",
            "store: %s (deleted with the demo's folder)" % os.path.basename(hub.cfg["store"]),
        )
