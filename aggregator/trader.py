"""An aggregator at work: it hears a market's offers, prices them with its strategy,
bids, and buys what it was filled from each battery over ETP, with its own pair keys.
The same class runs inside a hub (a hosted aggregator, through market_client.LocalLink)
and as its own process on its own machine (`gridbid aggregator run`, MarketLink), in
one or many markets at once.

Per slot of a market:
1. `slot`: each offer goes to the strategy (strategies.py); its price becomes a bid
   layer. The links to the offering batteries are opened now, so buying at the gate
   does not wait for TCP.
2. `fills`: for each battery it was filled by, a Bid at the clearing price for its
   kWh, which the battery's auction accepts (the price is at or above its reserve).
   Then, write-ahead, the market maker is told: Received, and Confirmed before the
   BidConfirm leaves; a contract the hub does not hold is never confirmed (the
   battery's accept lapses), so neither side keeps an orphan.
3. `clearing`: the strategy learns the outcome of each of its bids.
4. The battery's outcome (a TERMINATE answering our BidConfirm) tells the strategy
   how much of the promise it delivered: the battery's reputation with us.
"""

import asyncio
import itertools
import logging

from aggregator.strategies import Offer, observe_clearing
from protocol import contract, frame, message
from transport import tasks
from transport.links import DeviceLink, QueueFull, now_ms

log = logging.getLogger(__name__)
OUTCOMES = {code: contract.STATE_NAMES[state] for state, code in contract.OUTCOME_CODES.items()}
REPLY_S = 5.0  # the market maker's answer to a contract report
REPORTS_PER_MESSAGE = 1000  # the most the market takes in one `contracts` message
KEEP_SLOTS = 16  # slots whose bids wait for their clearing, per trader
KEEP_CONTRACTS = 100_000  # contracts whose outcome is awaited (for reputation)
MARGIN_ANSWERS = ("margin", "faucet", "blockhash", "deposit")  # hub/market/funding.py


class Trader:
    def __init__(self, identity, strategy, max_kw=None, bind_timeout_s=2.0, store=None):
        self.name, self.key_id = identity.name, identity.key_id
        self.strategy = strategy
        self.store = store  # its own records (aggregator/store.py), or None (hosted)
        self.max_kw, self.bind_timeout_s = max_kw, bind_timeout_s
        # Its pair key with each battery, derived from its own master secret (identity.py).
        self.codec = frame.Codec(identity.keyring(), key_id=self.key_id)
        self.ids = message.MessageIds(now_ms())
        self.markets = {}  # market name -> MarketLink / LocalLink
        self.links = {}  # device id -> DeviceLink
        self.bids = {}  # (market, slot) -> {device: (Offer, Bid)}
        self.won = {}  # (market, slot) -> {device: kWh}
        self.contracts = {}  # our BidConfirm id -> (device, kWh promised)
        self.buying = set()  # tasks
        self.keeper = None  # its MarginKeeper (margin.py), where markets settle on chain
        self.terms = {}  # market name -> its margin terms (None: it does not settle)
        self._waiting = {}  # our ETP message id -> Future of the battery's answer
        self._replies = {}  # market ref -> Future of the market maker's answer
        self._reports = {}  # market name -> contract reports waiting for this loop turn
        self._refs = itertools.count(1)
        self._layer_ids = itertools.count(1)
        if store is not None:  # what it learned before a restart
            for device, (delivered, promised) in store.delivery().items():
                strategy.delivered(device, promised, delivered)
            self.contracts.update(store.awaited())

    def trade_in(self, link):
        """Trade in this market (its link calls on_message); -> the link, started."""
        self.markets[link.market] = link
        return link.start()

    async def close(self):
        for task in list(self.buying):
            task.cancel()
        await asyncio.gather(*self.buying, return_exceptions=True)
        await asyncio.gather(*(m.close() for m in self.markets.values()))
        await asyncio.gather(*(link.close() for link in self.links.values()))

    # --- the market's messages ------------------------------------------------------

    def on_message(self, market, msg):
        kind = msg.get("type")
        if kind == "slot":
            self._slot(market, msg)
        elif kind == "fills":
            log.info("%s: filled by %d batteries in %s at %s c/kWh", self.name,
                     len(msg["fills"]), msg["slot"], msg["price"])  # fmt: skip
            fills = self._as_bid(market, msg)
            if self.store is not None:
                self.store.fills(market.market, msg["slot"], msg["price"], fills)
            won = self.won.setdefault((market.market, msg["slot"]), {})
            for fill in fills:  # now: the clearing that follows in this read is learnt with it
                won[fill["device"]] = won.get(fill["device"], 0.0) + fill["kwh"]
                task = tasks.watch(
                    asyncio.ensure_future(self.buy(market, msg, fill)),
                    "%s buying from battery %s" % (self.name, fill["device"]),
                )
                self.buying.add(task)
                task.add_done_callback(self.buying.discard)
        elif kind == "clearing":
            self._learn(market, msg)
            self._keep_margin(market)
        elif kind == "contract_results":
            for result in msg.get("results") or ():
                waiter = self._replies.pop(result.get("ref"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(result)
        elif kind in ("contract_result", "error", "bid_result") + MARGIN_ANSWERS:
            waiter = self._replies.pop(msg.get("ref"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
            elif kind == "error":
                log.warning("%s: market %s refused %s: %s", self.name, market.market,
                            msg.get("what"), msg.get("why"))  # fmt: skip
        elif kind == "welcome":
            log.info("%s: trading in market %s", self.name, market.market)
            self.terms[market.market] = msg.get("margin")
            if msg.get("margin") and self.keeper is None:
                log.warning("%s: market %s settles on chain and takes bids only within a "
                            "margin: give this aggregator a wallet (aggregator.toml wallet)",
                            self.name, market.market)  # fmt: skip
            self._keep_margin(market)

    def use_wallet(self, keeper):
        """Keep a margin with this MarginKeeper (margin.py) where a market asks for one."""
        self.keeper = keeper

    def _keep_margin(self, market):
        terms = self.terms.get(market.market)
        if terms and self.keeper is not None:
            self.keeper.keep(self.tell, market, terms)

    def _slot(self, market, msg):
        for old in list(self.bids)[:-KEEP_SLOTS]:  # a clearing that never came (hub gone)
            self.bids.pop(old, None)
            self.won.pop(old, None)
        layers, mine = [], self.bids.setdefault((market.market, msg["slot"]), {})
        for o in msg["offers"]:
            device = o["device"]
            self.link(device, o["address"], o["port"])
            offer = Offer(device, o["kwh"], o["reserve"], msg["start"], msg["signal"],
                          o.get("reputation", 1.0))  # fmt: skip
            bid = self.strategy.bid(offer)
            if bid is None:
                continue
            mine[device] = (offer, bid)
            layers.append({"device": device, "price": bid.price, "kwh": bid.kwh,
                           "id": next(self._layer_ids)})  # fmt: skip
        if self.store is not None and layers:
            self.store.bids(market.market, msg["slot"], layers)
        for start in range(0, len(layers), 1000):  # the market takes 1000 layers a message
            try:
                market.send({"type": "bid", "slot": msg["slot"], "ref": next(self._refs),
                             "layers": layers[start : start + 1000]})  # fmt: skip
            except ConnectionError as exc:
                log.warning("%s: bids for %s not sent: %s", self.name, msg["slot"], exc)
                return

    def _as_bid(self, market, msg):
        """The fills the market maker may hold us to: in a slot we bid in, at no more
        than our best layer's price, no more kWh in all than our layers'. The clearing
        pools the book, so a fill may be of another battery than a layer named. (The
        market maker's word alone buys nothing.)"""
        ours = [bid for _offer, bid in self.bids.get((market.market, msg.get("slot")), {}).values()]
        if not ours and self.store is not None:  # restarted since it bid: its own records
            ours = self.store.slot_bids(market.market, msg.get("slot"))
        if not ours and market.trusted:  # hosted by this very hub, restarted with it
            return list(msg.get("fills") or [])
        price = msg.get("price")
        if not ours or not isinstance(price, (int, float)):
            fills, price_ok, room = [], False, 0.0
        else:
            fills = msg.get("fills") or []
            price_ok = 0 < price <= max(bid.price for bid in ours) + 1e-9
            room = sum(bid.kwh for bid in ours) + 1e-6
        taken, given = [], len(msg.get("fills") or [])
        for fill in fills:
            kwh = fill.get("kwh")
            if price_ok and isinstance(kwh, (int, float)) and 0 < kwh <= room:
                room -= kwh
                taken.append(fill)
        if len(taken) != given:
            log.warning("%s: market %s filled us beyond our bids in %s (at %r): %d of %d "
                        "fills not bought", self.name, market.market, msg.get("slot"), price,
                        given - len(taken), given)  # fmt: skip
        return taken

    def _learn(self, market, msg):
        key = (market.market, msg["slot"])
        observe_clearing(self.strategy, self.bids.pop(key, {}), self.won.pop(key, {}),
                         msg["price"])  # fmt: skip

    # --- buying -------------------------------------------------------------------------

    def link(self, device_id, address, port):
        """The session with this battery, opened (and kept up) on first use."""
        link = self.links.get(device_id)
        if link is None or (link.address, link.port) != (address, port):
            if link is not None:
                asyncio.ensure_future(link.close())
            link = DeviceLink(self.codec, address, port, self._received,
                              on_connect=self._hello(device_id), device_id=device_id)  # fmt: skip
            self.links[device_id] = link.start()
        return link

    def _hello(self, device_id):
        # A battery closes a session that says nothing authentic: a Query says who we are.
        def hello(link):
            link.send(message.query(self.ids.next(), device_id))

        return hello

    async def buy(self, market, msg, fill):
        """Buy a fill from its battery. -> (state, why) (also told to the market maker)."""
        device, slot = fill["device"], msg["slot"]
        self.link(device, fill["address"], fill["port"])
        limits = [x for x in (self.max_kw, fill.get("max_kw")) if x]
        kw = min(limits) if limits else 1.0  # the power asked: ours, the battery's, or 1 kW
        bid = message.bid(self.ids.next(), device, msg["price"], round(fill["kwh"], 4))
        answer = await self.ask(device, bid, self.bind_timeout_s)
        if answer is None or answer.message.message_type != message.BID_ACCEPT:
            why = "no answer" if answer is None else "rejected (code %d)" % (
                answer.message.termination_code)  # fmt: skip
            log.warning("%s could not buy %.4f kWh of battery %d: %s", self.name,
                        fill["kwh"], device, why)  # fmt: skip
            return None, why
        got = answer.message
        report = {"type": "contract", "slot": slot, "device": device, "bid_id": bid.message_id,
                  "price": got.sale_price, "kwh": got.required_energy_amount, "kw": kw}  # fmt: skip
        said = await self.report(market, dict(report, state="Received"))
        if said.get("type") != "contract_result":
            return None, "the market maker did not take it: %s" % said.get("why")
        link = self.links[device]
        confirm = message.bid_confirm(
            self.ids.next(), device, got.sale_price, got.required_energy_amount, kw
        )
        if not link.connected.is_set():
            said = await self.report(market, dict(report, state="Withdrawn", why="link down"))
            self._keep(said, market, slot, report, None, "Withdrawn")
            return "TerminatedByAtn", "the link to battery %d is down" % device
        said = await self.report(market, dict(report, state="Confirmed",
                                              confirm_id=confirm.message_id))  # fmt: skip
        if said.get("type") != "contract_result":  # not held by the hub: never confirmed
            return None, "the market maker did not take the confirm: %s" % said.get("why")
        self.contracts[confirm.message_id] = (device, got.required_energy_amount)
        self._keep(said, market, slot, report, confirm.message_id, "Confirmed")
        while len(self.contracts) > KEEP_CONTRACTS:  # outcomes that never came
            self.contracts.pop(next(iter(self.contracts)))
        try:
            link.send(confirm, reply_to=got.message_id)
        except QueueFull:
            pass  # Confirmed on both books: no report by the deadline makes it UnknownOutcome
        return "Confirmed", said.get("contract")

    def _keep(self, said, market, slot, report, confirm_id, state):
        if self.store is not None and said.get("contract"):
            self.store.contract(said["contract"], market.market, slot, report["device"],
                                report["bid_id"], confirm_id, report["price"], report["kwh"],
                                report["kw"], state)  # fmt: skip

    async def tell(self, market, request):
        """A request to the market maker -> its answer ({"type": "error", ...} when
        refused, unreachable or silent)."""
        ref, waiter = self._waiter()
        try:
            market.send(dict(request, ref=ref))
        except ConnectionError as exc:
            self._replies.pop(ref, None)
            return {"type": "error", "why": str(exc)}
        return await self._answer(ref, waiter)

    async def report(self, market, report):
        """A contract report -> the market maker's answer to it, as tell(). The reports
        made in one turn of the loop leave in one `contracts` message (one commit at the
        hub: after a gate the reports of hundreds of batteries come at once)."""
        ref, waiter = self._waiter()
        queue = self._reports.setdefault(market.market, [])
        queue.append(dict(report, ref=ref))
        if len(queue) == 1:
            asyncio.get_running_loop().call_soon(self._send_reports, market)
        return await self._answer(ref, waiter)

    def _waiter(self):
        """A new market ref, and the Future its answer will settle (on_message)."""
        ref = next(self._refs)
        self._replies[ref] = asyncio.get_running_loop().create_future()
        return ref, self._replies[ref]

    async def _answer(self, ref, waiter):
        try:
            return await asyncio.wait_for(waiter, REPLY_S)
        except asyncio.TimeoutError:
            return {"type": "error", "why": "no answer"}
        finally:
            self._replies.pop(ref, None)

    def _send_reports(self, market):
        reports = self._reports.pop(market.market, [])
        for start in range(0, len(reports), REPORTS_PER_MESSAGE):
            chunk = reports[start : start + REPORTS_PER_MESSAGE]
            try:
                market.send({"type": "contracts", "ref": next(self._refs), "reports": chunk})
            except ConnectionError as exc:
                for sent in chunk:
                    waiter = self._replies.get(sent["ref"])
                    if waiter is not None and not waiter.done():
                        waiter.set_result({"type": "error", "why": str(exc)})

    async def ask(self, device_id, msg, timeout_s, reply_to=0):
        """Send msg to the battery and wait for the frame that answers it (or None)."""
        link = self.links.get(device_id)
        if link is None:
            return None
        waiter = self._waiting[msg.message_id] = asyncio.get_running_loop().create_future()
        try:
            link.send(msg, reply_to, expires_ms=now_ms() + int(timeout_s * 1000))
            return await asyncio.wait_for(waiter, timeout_s)
        except (asyncio.TimeoutError, QueueFull):
            return None
        finally:
            self._waiting.pop(msg.message_id, None)

    def _received(self, link, got):
        # A battery signs with its device id and speaks only for itself: a frame on this
        # link from any other key, or about another device, is dropped (the pair key
        # already binds both ends; this names the fault when a peer is misconfigured).
        if got.group or got.key_id != link.device_id or got.message.device_id != got.key_id:
            log.warning("%s dropped a frame from key %d about device %d on battery %d's link",
                        self.name, got.key_id, got.message.device_id, link.device_id)  # fmt: skip
            return
        waiter = self._waiting.pop(got.reply_to, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(got)
            return
        msg = got.message
        if msg.message_type == message.TERMINATE and got.reply_to in self.contracts:
            device, promised = self.contracts.pop(got.reply_to)
            self.strategy.delivered(device, promised, msg.required_energy_amount)
            if self.store is not None:
                state = OUTCOMES.get(msg.termination_code, "CompletedUnknownOutcome")
                self.store.outcome(got.reply_to, state, msg.required_energy_amount)
        elif msg.message_type == message.DEVICE_FAILURE:
            log.warning("%s: DEVICE FAILURE of battery %d (cause %d)", self.name,
                        msg.device_id, msg.termination_code)  # fmt: skip
