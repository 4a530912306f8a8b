"""`gridbid experiment --live` on the hub's market: the real thing on loopback.

Per run: the batteries run the firmware on the MicroPython VM (simulator/fleet.py),
each with a simulated meter, BMS and inverter set to the experiment's battery
(capacity, SoC, SoH); `gridbid hub run` is its own process with hub.toml; each
aggregator is its own `gridbid aggregator run` process, admitted with `gridbid hub
admit`, its aggregator.toml giving the experiment's strategy, values (private: value
= level + margin, spread) and seed, so it draws what the simulation's aggregator k
draws. hub.min_aggregators = N holds the first slot until all N are in. The figures
come from the hub's SQLite store after it stops: offers, the clearing and its fills.

Limits (the README's experiment section states them): slots last LIVE_SLOT_S seconds
and a battery sells at most its max_kw for that long (~0.011 kWh), so the simulation
it is compared with runs with the same slot energy; private values, value, truthful
and adaptive strategies only; the aggregators' surplus is private to them (not in the
hub's store), so it and welfare are not reported; the owners' own reserve is taken
at the start (their SoC moves by Wh)."""

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from aggregator.strategies import Offer
from simulator import vm
from simulator.markets import Traded
from simulator.model import FLOOR, MAX_KW, MIN_SOC, Battery, Tally

LIVE_SLOT_S, LIVE_GATE_S = 8, 3
SLOT_KWH = round(MAX_KW * LIVE_SLOT_S / 3600, 4)  # what a battery's slot holds at max_kw
STRATEGIES = ("value", "truthful", "adaptive")


def run_market_live_hub(market, buyers, devices, slots, seed, floor=FLOOR, tick=None,
                        slot_kwh=SLOT_KWH, spec=None):  # fmt: skip
    """As experiment.run_market for a HubMarket (its theory), on the real processes.
    spec: the aggregators' settings {strategy, level, spread, margin, believed, budget,
    capacity}. -> figures"""
    return asyncio.run(_Run(market, len(buyers), devices, slots, seed, floor, tick, spec).go())


class _Run:
    def __init__(self, market, n, devices, slots, seed, floor, tick, spec):
        self.market, self.n, self.devices, self.slots = market, n, devices, slots
        self.seed, self.floor, self.tick, self.spec = seed, floor, tick, spec
        self.processes = []

    async def go(self):
        from simulator.fleet import Fleet

        with tempfile.TemporaryDirectory(prefix="gridbid-live-") as tmp:
            tmp = Path(tmp)
            fleet = Fleet(tmp / "fleet", aggregators=range(1, self.n + 1),
                          reserve_floor=self.floor, min_soc_pct=MIN_SOC, max_kw=MAX_KW,
                          slot_s=LIVE_SLOT_S, gate_s=LIVE_GATE_S, slots_ahead=1, poll_ms=100,
                          tick_ms=100, success_share=0.9)  # fmt: skip
            batteries = [Battery(1001 + i, self.seed, self.floor) for i in range(self.devices)]
            try:
                for b in batteries:
                    await fleet.add(
                        sim_settings={
                            "capacity_kwh": b.capacity,
                            "soc_pct": b.soc_pct(),
                            "soh_pct": b.soh,
                        }
                    )
                await asyncio.gather(*(d.start() for d in fleet.devices))
                config = self.hub_config(fleet, tmp)
                folders = [await self.admit(fleet, config, tmp, k) for k in range(1, self.n + 1)]
                log = tmp / "hub.log"
                hub = await self.start(["hub", "run", "--config", str(config), "--slots",
                                        str(self.slots)], log)  # fmt: skip
                for folder in folders:
                    await self.start(
                        ["aggregator", "run", "--config", str(folder / "aggregator.toml")],
                        folder / "log",
                    )
                await self.wait(hub, log)
            finally:
                await self.stop()
                await fleet.close()
            return self.figures(tmp / "hub.sqlite", batteries)

    def hub_config(self, fleet, tmp):
        keys = fleet.hub_keys(tmp / "hub-keys.json")
        from simulator.fleet import free_port

        hub = {"name": "live", "store": str(tmp / "hub.sqlite"), "keys_file": str(keys),
               "group_addr": fleet.group_addr, "group_port": fleet.group_port,
               "interface": "127.0.0.1", "device_port": fleet.tcp_port, "slot_s": LIVE_SLOT_S,
               "gate_s": LIVE_GATE_S, "discovery_s": 1.5, "answer_s": 1.0,
               "bind_timeout_s": 1.5, "market_bind": "127.0.0.1", "market_port": free_port(),
               "min_aggregators": self.n}  # fmt: skip
        path = tmp / "hub.toml"
        path.write_text("[hub]\n" + "".join("%s = %s\n" % (k, json.dumps(v))
                                            for k, v in hub.items()))  # fmt: skip
        return path

    async def admit(self, fleet, config, tmp, k):
        """Aggregator k's folder: identity, admission (`gridbid hub admit`), aggregator.toml."""
        folder = tmp / ("agg%d" % k)
        folder.mkdir()
        fleet.identity(folder / "identity.json", k, "agg%d" % k)
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridbid.cli", "hub", "admit", "--config", str(config),
            "--aggregator", str(k), "--name", "agg%d" % k, "--host", "127.0.0.1", "--out",
            str(folder / "market.json"), cwd=vm.ROOT, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)  # fmt: skip
        _out, err = await done.communicate()
        if done.returncode != 0:
            raise OSError("gridbid hub admit failed: %s" % err.decode(errors="replace").strip())
        spec = self.spec
        settings = {"identity": "identity.json", "store": "aggregator.sqlite",
                    "strategy": spec["strategy"], "value": spec["level"] + spec["margin"],
                    "spread": spec["spread"], "margin": spec["margin"],
                    "bidders": spec["believed"] or self.n, "seed": self.seed}  # fmt: skip
        for limit in ("budget", "capacity"):
            if spec[limit] is not None:
                settings[limit] = spec[limit]
        lines = ["[aggregator]"] + ["%s = %s" % (k, json.dumps(v)) for k, v in settings.items()]
        lines += ["", "[[market]]", 'admission = "market.json"']
        (folder / "aggregator.toml").write_text("\n".join(lines) + "\n")
        return folder

    async def start(self, args, log):
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gridbid.cli", *args, cwd=vm.ROOT, stdout=out,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process

    async def wait(self, hub, log):
        """Until the hub has traded its slots (a tick per slot, from its log)."""
        deadline = time.monotonic() + (self.slots + 4) * LIVE_SLOT_S + 60
        seen = 0
        while hub.returncode is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the live hub did not trade %d slots in time" % self.slots)
            try:
                await asyncio.wait_for(hub.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            done = log.read_text(errors="replace").count(": slot ")
            for _ in range(max(0, min(done, self.slots) - seen)):
                if self.tick:
                    self.tick()
            seen = max(seen, min(done, self.slots))
        if hub.returncode != 0:
            raise OSError("gridbid hub run exited %d: %s" % (
                hub.returncode, log.read_text(errors="replace")[-400:]))  # fmt: skip
        for _ in range(self.slots - seen):
            if self.tick:
                self.tick()

    async def stop(self):
        for process in self.processes:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()

    def figures(self, store_path, batteries):
        """The run's figures from the hub's store, as the simulation's Tally makes them."""
        from hub.store import Store
        from simulator.model import firmware

        reserve_py, store = firmware("reserve"), Store(store_path)
        costs = {b.device_id: reserve_py.reserve_price(self.floor, b.soc_pct(), b.health)
                 for b in batteries}  # fmt: skip
        tally = Tally()
        try:
            sql = "SELECT DISTINCT slot FROM offers ORDER BY slot"
            slots = [r["slot"] for r in store.rows(sql)]
            for i, slot in enumerate(slots):
                offers = [Offer(r["device"], r["kwh"], r["reserve"], i) for r in store.rows(
                    "SELECT device, kwh, reserve FROM offers WHERE slot = ? ORDER BY device",
                    (slot,))]  # fmt: skip
                sold, layers = (
                    [],
                    store.rows(
                        "SELECT COUNT(*) AS n FROM bids WHERE slot = ? AND side = 'bid'", (slot,)
                    ),
                )
                trades = store.rows("SELECT owner, kwh, price FROM trades WHERE slot = ? AND "
                                    "side = 'ask'", (slot,))  # fmt: skip
                theory = None
                if trades and self.market.theory:
                    theory = self.market.theory(offers, self.n)
                for t in trades:
                    sold.append((int(t["owner"]), t["kwh"], t["price"], theory))
                bidders = layers[0]["n"] / len(offers) if offers else 0.0
                tally.add(offers, Traded(sold, 0.0, bidders, 0.0), costs)
        finally:
            store.close()
        figures = tally.figures()
        figures["aggregators_surplus_c"] = figures["welfare_c"] = None  # private to them
        return figures
