"""`gridbid hub run`: the hub, the market maker. Per market slot, on the slots' grid:

1. Offers. When the previous slot starts, the hub Queries the group (the Query
   carries the latest price signal; batteries' reserves follow it) and every
   battery's QueryResponse becomes an ask layer in the slot's book at its reserve.
   A battery offers for its next slot (firmware slots_ahead = 1): this one.
2. Bids. The offers go to every aggregator in the market (the market API:
   hub/market/exchange.py), each on its own machine or hosted here; their bid
   layers enter the book until the gate, sealed: no aggregator sees another's.
3. At gate closure the market maker clears the book once: one uniform price,
   bilateral trades (hub/market/maker.py). Publishing the price binds them: each
   buyer gets its fills, buys its share from each battery over ETP with its own
   pair key, and tells the hub each contract's state (hub/ledger.py records them).
   The price signal of the book goes out with the next Query.
4. Batteries send the hub receipts (their outcome reports and status, sealed with
   their pair key with the hub): the ledger takes each contract's outcome from its
   own battery only. Overdue contracts become CompletedUnknownOutcome.

Every layer, trade and contract state is in the SQLite store before it counts,
so a hub killed mid-slot and started again rebuilds the book, re-clears to the
same recorded trades, and hands its buyers only what no contract holds yet.
"""

import asyncio
import gc
import logging
import time
from collections import namedtuple

from aggregator.market_client import LocalLink
from aggregator.strategy_config import make_strategy
from aggregator.trader import Trader
from hub import controls
from hub.config import hub_toml, keys_file
from hub.controls import Controls
from hub.disk import Disk
from hub.events import Events
from hub.ledger import Ledger
from hub.market.clearing import ASK, BID
from hub.market.exchange import Exchange
from hub.market.grid import SlotGrid
from hub.market.maker import MarketMaker
from hub.market.price_signal import PriceSignal
from hub.store import Store, views
from protocol import auth, frame, message
from transport import tasks
from transport.discovery import Discovery, Registry
from transport.links import now_ms

log = logging.getLogger(__name__)
GROUP_SENDERS = 4096  # batteries whose group replay windows the hub keeps (~150 B each)


class StartError(RuntimeError):
    """An integration of hub.toml could not start (its port is busy, ...)."""

    def __init__(self, integration, reason):
        super().__init__("[%s] cannot start: %s" % (integration, reason))
        self.integration, self.reason = integration, reason


class Hub:
    def __init__(self, cfg, seed=None, loss=0.0):
        self.cfg = cfg
        self.store = Store(cfg["store"])
        self.events = Events()  # for the MQTT bridge, the web page, CoAP (hub/events.py)
        self.controls = Controls(self.store, self.events)  # operators' settings in force
        self.disk = Disk(self.store, self.events, cfg["store"], cfg["telemetry_raw_h"],
                         cfg["telemetry_minutes_d"], cfg["disk_budget_mb"])  # fmt: skip
        self._upkeep = None  # the disk's task, while the hub runs
        # The slots' grid: hub.toml's slot_s until governance moves it on (the schedule is
        # a control, so a restarted hub keeps it).
        self.grid = SlotGrid(cfg["slot_s"], cfg["gate_s"], cfg["answer_s"],
                             self.controls.get(controls.GRID))  # fmt: skip
        if self.grid.slot_s != cfg["slot_s"]:
            log.info("market: %d s slots (governance; hub.toml says %d)",
                     self.grid.slot_s, cfg["slot_s"])  # fmt: skip
        signal = PriceSignal(cfg["p_balance"], cfg["p_con"], cfg["k"])
        self.market = MarketMaker(self.store, cfg["name"], cfg["slot_s"], cfg["gate_s"], signal,
                                  self.grid)  # fmt: skip
        self.ledger = Ledger(self.store, cfg["slot_s"], cfg["gate_s"], cfg["name"],
                             events=self.events, grid=self.grid)  # fmt: skip
        self.registry = Registry()
        self.ids = message.MessageIds(now_ms())
        self.discovery = Discovery(
            # The hub's Queries go out on the group under its own key id; every battery
            # answers there, so its replay table holds them all (GROUP_SENDERS: the hub's
            # limit on the battery windows an unauthenticated crowd could make it keep).
            # Batteries' receipts come the same way, sealed with their pair key with the hub.
            frame.Codec(cfg["keys"].etp, key_id=cfg["key_id"],
                        group_replay=auth.ReplayGuard(GROUP_SENDERS)),
            self.registry, cfg["group_addr"],
            cfg["group_port"], cfg["interface"], loss=loss, seed=seed, on_frame=self.on_frame,
        )  # fmt: skip
        hosted = {a["key_id"]: a["name"] for a in cfg["aggregators"]}
        self.exchange = Exchange(self.market, self.ledger, self.store, self.controls,
                                 cfg["name"], hosted, cfg["device_port"],
                                 cfg["min_aggregator_reputation"])  # fmt: skip
        self.market_server = None  # the market API on TCP (hub.toml market_port)
        # Aggregators hosted in-process (the demo's convenience): each with its own
        # identity (its own file) and pair keys with batteries that only it derives, in
        # the market through the same API as an independent one (LocalLink).
        self.traders = {
            a["key_id"]: Trader(a["identity"], make_strategy(a, seed), a["max_kw"],
                                cfg["bind_timeout_s"])
            for a in cfg["aggregators"]
        }  # fmt: skip
        self.signal = 0.0  # the latest price signal, sent with every Query
        self.known = set()  # batteries in the store
        self.integrations = {}  # name -> started by run(), with async close()
        self.vital = tasks.Vital()  # a failure of the page's server stops run()

    # --- running ------------------------------------------------------------------

    async def start_integrations(self):
        """MQTT, CoAP, the web page, settlement: each [section] of hub.toml that is set."""
        import importlib

        for name, settings in self.cfg.get("integrations", {}).items():
            if name in self.integrations:
                continue  # run() again after one failed to start: the rest are up
            module = importlib.import_module(hub_toml.INTEGRATIONS[name])
            try:
                self.integrations[name] = await module.start(self, settings)
            except (OSError, RuntimeError, ValueError) as exc:  # a busy port, a bad address
                raise StartError(name, exc) from None

    async def start_market(self):
        """The market API: its TCP server (when market_port is set), hosted aggregators."""
        if self.cfg["market_port"] and self.market_server is None:
            from hub.market.server import MarketServer

            server = MarketServer(self.exchange, self.cfg["keys"], self.cfg["market_bind"],
                                  self.cfg["market_port"])  # fmt: skip
            try:
                self.market_server = await server.start()
            except OSError as exc:
                raise StartError("market", exc) from None
        settlement = self.integrations.get("settlement")
        for key_id, trader in self.traders.items():
            if settlement is not None and trader.keeper is None:
                # Hosted aggregators are the operator's own: their wallets are its too.
                try:
                    trader.use_wallet(settlement.hosted_wallet(key_id, trader.name))
                except ValueError as exc:  # no wallet file (a cluster), or one others read
                    raise StartError("settlement", exc) from None
            if not trader.markets:
                trader.trade_in(LocalLink(self.exchange, key_id, trader.on_message))

    async def run(self, slots=None):
        """Trade `slots` slots (None: until cancelled). -> the slots' summaries (none kept
        when trading until cancelled: a summary holds a slot's trades and contracts).
        TaskFailed when a task it cannot run without fails (self.vital)."""
        return await self.vital.run(self._run(slots))

    async def _run(self, slots):
        await self.start_integrations()
        self._upkeep = tasks.keep("disk upkeep", self.disk.run)  # a full disk: retried
        self.exchange.paying_back = False  # until a gated book is cleared again (resume)
        await self.start_market()
        await self.discovery.start()
        # Every battery that answers within discovery_s (no count of them is known).
        found = await self.discovery.find(self.ids, 10**6, timeout_s=self.cfg["discovery_s"])
        cfg = self.cfg
        log.info("hub %s: %d batteries answered on %s:%d",
                 cfg["name"], len(found), cfg["group_addr"], cfg["group_port"])  # fmt: skip
        summaries, traded = [], 0
        resumed = await self.resume()  # a restart between a gate closure and its slot
        self.exchange.paying_back = True
        if resumed is not None:
            traded = 1
            if slots is not None:
                summaries.append(resumed)
        while slots is None or traded < slots:
            await self.exchange.quorum(self.cfg["min_aggregators"])
            summary = await self.trade_slot()
            traded += 1
            if slots is not None:
                summaries.append(summary)
            if traded == 1:
                # The links and the store are up: what lives now lives for good, so the
                # collector need not scan it again (a full collection: 25-30 ms -> ~0).
                gc.freeze()
        return summaries

    async def resume(self):
        """Started (again) after a slot's gate closed and before the slot starts: its
        clearing binds (recorded, or made now from the stored book), so buy what no
        contract holds yet, if the purchase can end before the slot starts (after it,
        a battery sells its next slot instead). -> the slot's summary, or None."""
        gate_s = self.cfg["gate_s"]
        now = time.time()
        start = self.grid.next_start(now)
        name = self.grid.slot_name(self.cfg["name"], start)
        if not start - gate_s <= now < start - self.cfg["bind_timeout_s"]:
            return None
        asks = self.store.bids(name, side=ASK)
        if not asks:
            return None
        offers = {}
        for row in asks:
            info = self.registry.devices.get(row["owner"])
            if info is not None:
                self._know(info)
                offers[info.device_id] = Offered(row["kwh"], row["price"], info.max_kw,
                                                 info.address)  # fmt: skip
        return await self.settle(name, start, offers)

    async def close(self):
        if self._upkeep is not None:
            self._upkeep.cancel()
            await asyncio.gather(self._upkeep, return_exceptions=True)
        for integration in reversed(list(self.integrations.values())):
            await integration.close()
        await asyncio.gather(*(trader.close() for trader in self.traders.values()))
        if self.market_server is not None:
            await self.market_server.close()
        self.discovery.close()
        self.store.close()

    async def trade_slot(self):
        gate_s = self.cfg["gate_s"]
        while True:
            self.follow_controls()  # governance may have moved the grid on
            now = time.time()
            start = self.grid.next_start(now)
            if start - gate_s - now >= self.cfg["answer_s"] + 0.2:
                break
            await asyncio.sleep(start - now + 0.01)  # too late for this one: the next
        name = self.grid.slot_name(self.cfg["name"], start)
        offers = await self.collect_offers(name, start)
        self.exchange.open_slot(name, start, start - gate_s, [
            {"device": d, "kwh": o.kwh, "reserve": o.reserve, "max_kw": o.max_kw,
             "address": o.address} for d, o in offers.items()
        ], self.signal)  # fmt: skip
        await asyncio.sleep(max(0.0, start - gate_s - time.time()))
        return await self.settle(name, start, offers)

    async def collect_offers(self, name, start):
        """Query the group; each answer with energy becomes an ask. -> {device: Offer}."""
        since = now_ms()
        await self.discovery.find(
            self.ids, len(self.registry.devices) or 1, self.cfg["answer_s"],
            retry_ms=250, price_signal=self.signal,
        )  # fmt: skip
        offers = {}
        off_grid = self.grid.off_grid(start, list(self.registry.devices), self._battery_configs)
        # In device order: aggregators see (and price) the offers in the same order always.
        for info in sorted(self.registry.devices.values(), key=lambda info: info.device_id):
            if self.discovery.answered.get(info.device_id, 0) < since or info.offer_kwh <= 0:
                continue
            if info.device_id in off_grid:
                continue
            self._know(info)
            # The owner's floor, set on the hub by an operator, raises the battery's reserve.
            reserve = max(info.reserve, self.controls.floor(info.device_id))
            offer = Offered(info.offer_kwh, reserve, info.max_kw, info.address)
            try:
                self.market.offer(name, info.device_id, info.offer_kwh, reserve,
                                  ref="offer:%d" % info.device_id)  # fmt: skip
            except ValueError as exc:  # a restarted hub: the battery's first offer stands
                log.info("offer of battery %d kept as first recorded: %s", info.device_id, exc)
            else:
                self.events.emit("offer", slot=name, device=info.device_id,
                                 kwh=info.offer_kwh, reserve=reserve)  # fmt: skip
            offers[info.device_id] = offer
        return offers

    def _know(self, info):
        if info.device_id not in self.known:
            key_id = info.device_id  # a battery signs with its device id (firmware key_id)
            self.store.add_device(info.device_id, key_id, info.address)
            self.known.add(info.device_id)
            self.events.emit("device", device=info.device_id, address=info.address)

    async def settle(self, name, start, offers):
        """Clear at the gate; the buyers buy and report until the slot's deadline."""
        result, trades = self.market.clear(name, int(time.time()))
        # The buyers' contracts must be made before the slot starts.
        wait_s = min(self.cfg["bind_timeout_s"] + 1.0, max(0.1, start - time.time() - 0.1))
        deadline = time.monotonic() + wait_s
        # Fills first, the trades recorded last, all in one turn of the loop: no report is
        # read before the trades are committed, and the buyers start buying ~25 ms sooner
        # (a crash in between loses nothing: the restarted hub clears the recorded book
        # the same). The record is the gate's last write.
        self.exchange.close_slot(name, start, result, trades, self.ledger.bound(name))
        self._publish_book(name)
        self.signal, demand, supply = self.market.price_signal(name)
        self.events.emit("price", slot=name, price=self.signal, demand=demand, supply=supply)
        self.market.record(name, result)
        while not self.exchange.settled(name) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        contracts = self.exchange.finish(name)
        for (buyer, device_id), (_cid, state) in contracts.items():
            if state not in ("Confirmed", "TerminatedByAtn"):
                log.warning("%s could not buy from battery %d: %s",
                            self._name_of(buyer), device_id, state)  # fmt: skip
        expired = self.ledger.expire(time.time())
        book = self.market.book(name)
        summary = {
            "slot": name, "start": start, "offers": len(offers),
            "offered_kwh": sum(o.kwh for o in offers.values()),
            "reserve": _mean([(o.reserve, o.kwh) for o in offers.values()]),
            "bid_layers": sum(1 for o in book.layers if o.side == BID),
            "price": result.price, "volume_kwh": result.volume_kwh, "signal": self.signal,
            "trades": [(t.buyer, t.battery, t.kwh) for t in trades],
            "contracts": contracts, "expired": expired,
        }  # fmt: skip
        self._say(summary)
        self.events.emit(
            "clearing", slot=name, start=start, price=result.price,
            volume_kwh=result.volume_kwh, reserve=summary["reserve"], offers=len(offers),
            bid_layers=summary["bid_layers"],
            trades=[{"buyer": self._name_of(b), "device": d, "kwh": k}
                    for b, d, k in summary["trades"]],
        )  # fmt: skip
        return summary

    def _publish_book(self, name):
        """The book is sealed until the gate: no bid layer leaves the hub before it (no
        event, so neither /ws nor MQTT; the REST views hide an open slot's). At the gate
        every layer is published, as it was recorded, for audit."""
        for row in self.store.bids(name, side=BID):
            self.events.emit("bid", slot=name, aggregator=self._name_of(row["owner"]),
                             device=views.device_of(row["ref"]), price=row["price"],
                             kwh=row["kwh"])  # fmt: skip

    def _name_of(self, key_id):
        return self.aggregators().get(key_id) or str(key_id)

    def aggregators(self):
        """{key id: name} of the aggregators in this market: hosted and admitted."""
        return {**self.controls.admitted(), **self.exchange.names}

    # --- operators' controls (hub/controls.py) ----------------------------------------

    def follow_controls(self, now=None):
        """Before each slot: the controls again (other processes write them too), the
        price signal's parameters governance set, and a governed slot length scheduled."""
        self.controls.refresh()
        params = {p: self.controls.get("market." + p) for p in controls.SIGNAL_PARAMS}
        for name, (old, new) in self.market.tune(**params).items():
            log.info("market: %s %s -> %s (governance)", name, old, new)
        scheduled = self.grid.schedule(self.controls.get("market.slot_s"),
                                       time.time() if now is None else now)  # fmt: skip
        if scheduled is not None:
            self.controls.record(controls.GRID, list(scheduled), "hub")

    def set_control(self, name, value, by):
        """Set (None: clear) an operator's setting; ValueError names a bad one."""
        aggregators = set(self.aggregators().values())
        self.controls.set(name, value, by, self.registry.devices, aggregators)

    def _battery_configs(self):
        """{device: battery-<id>.json} as `gridbid hub keys` provisioned them."""
        where = self.cfg.get("keys_file")
        return keys_file.battery_configs(where) if where else {}

    def _say(self, s):
        if s["price"] is None:
            why = "bids below every reserve" if s["offers"] else "no battery offered"
            log.info("slot %s: %d offers, no trade (%s)", s["slot"], s["offers"], why)
            return
        made = sum(1 for cid, state in s["contracts"].values() if state == "Confirmed")
        log.info("slot %s: %d offers (%.4f kWh, mean reserve %.2f), %d bid layers -> "
                 "%.4f kWh at %.2f c/kWh; %d contracts",
                 s["slot"], s["offers"], s["offered_kwh"], s["reserve"] or 0,
                 s["bid_layers"], s["volume_kwh"], s["price"], made)  # fmt: skip

    # --- frames from batteries --------------------------------------------------------

    def on_frame(self, got, address):
        """A battery's frame for the hub (transport/discovery.py passes only those sealed
        with the battery's pair key with the hub, about that battery): its receipts,
        status and failures speak for that battery only."""
        msg = got.message
        kind = msg.message_type
        if kind == message.DEVICE_FAILURE:
            log.warning("DEVICE FAILURE battery %d (cause %d)", msg.device_id,
                        msg.termination_code)  # fmt: skip
            self.events.emit("failure", device=msg.device_id, cause=msg.termination_code)
        elif kind == message.TERMINATE and got.reply_to:
            moved = self.ledger.reported(msg.device_id, None, got.reply_to,
                                         msg.termination_code,
                                         msg.required_energy_amount)  # fmt: skip
            if moved:
                row, state = moved
                log.info("contract %s of battery %d: %s, %.4f kWh metered",
                         row["id"], row["device"], state, msg.required_energy_amount)  # fmt: skip
        elif kind == message.BESS_STATUS:
            if msg.device_id in self.known and msg.energy_total > 0:
                reading = dict(
                    soc=100.0 * msg.remaining_battery_energy / msg.energy_total,
                    remaining_kwh=msg.remaining_battery_energy, voltage=msg.battery_voltage,
                    power_kw=msg.discharge_rate, health=msg.battery_health_status_code,
                )  # fmt: skip
                charged, discharged = self.store.record_telemetry(msg.device_id, **reading)
                self.events.emit("telemetry", device=msg.device_id, **reading,
                                 charged_kwh=charged, discharged_kwh=discharged)  # fmt: skip


# A battery's offer in a slot, as the hub lists it to the market.
Offered = namedtuple("Offered", "kwh reserve max_kw address")


def _mean(pairs):
    weight = sum(w for _v, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None
