"""The market API, the hub's side: who trades in this market, what each aggregator
sees, and what it may do. One object owns it; the transports (hub/market/server.py
for TCP, aggregator/market_client.py's LocalLink for aggregators the hub hosts) only
carry its messages, so a hosted aggregator and an independent one go through the
same code. README "Market API" has the message table.

Per slot:
1. `slot` (to every subscribed aggregator, when the offers are in): the batteries'
   offers at their reserve, where to reach each, the price signal, the gate.
2. `bid` (from an aggregator, before the gate): bid layers, added to the book and
   never replaced. Sealed: no other aggregator sees them before the gate.
3. At the gate: `fills` to each buyer (its own trades only), then `clearing` to all
   (the price and volume; the book is on the hub's REST API for audit).
4. `contract` (from the buyer; or `contracts`, several in one message and one commit):
   Received when the battery accepted its Bid; Confirmed before its BidConfirm leaves
   (write-ahead: the buyer sends it only once the hub's answer says it is committed, so
   the hub never misses a contract a battery holds); Withdrawn. A fill with no
   Confirmed by the deadline is withdrawn (no orphan contract: the battery's accept
   lapses unconfirmed too).

Every refusal (malformed, late, over a limit, no such fill, revoked) is one `error`
answer and one row in market_refusals; the aggregator's session goes on. Limits are
per aggregator (messages per second, layers per message and per slot), so a flood
from one delays no other. Revocation (`gridbid hub revoke`) is read at most a second
late: from then on its bids and contracts are refused and new sessions too.
"""

import asyncio
import logging
import time

from hub.market import whole, within
from hub.market.cleared import Cleared
from hub.market.clearing import BID
from hub.market.funding import KINDS as FUNDING
from hub.market.funding import Funding
from hub.market.standing import LIMITS, Refused, Standing
from hub.store.reputation import Reputations
from protocol import message
from transport.counts import Counts

log = logging.getLogger(__name__)


class Participant:
    """One aggregator's session on the market, over whichever transport."""

    def __init__(self, key_id, name, send, close, standing):
        self.key_id, self.name = key_id, name
        self._send = send  # the transport's: queues the message, never blocks
        self.close = close  # the transport's: ends the session (None: in-process)
        self.standing = standing
        self.subscribed = False

    def send(self, message):
        self._send(message)


class OpenSlot:
    def __init__(self, name, start, gate_at, offers, signal):
        self.name, self.start, self.gate_at, self.signal = name, start, gate_at, signal
        self.offers = offers  # device -> the offer as sent ({"device", "kwh", ...})
        self.layers = {}  # aggregator -> layers it added
        self.spent = {}  # aggregator -> what its layers may cost (base units; margin)


class Exchange:
    def __init__(self, market, ledger, store, controls, market_name, names, device_port,
                 min_reputation=0.0):  # fmt: skip
        self.market, self.ledger, self.store = market, ledger, store
        self.controls = controls  # hub/controls.py: paused.<name>, admitted/revoked ids
        self.market_name = market_name
        self.names = dict(names)  # aggregator id -> name: the hosted ones, and admitted ones
        self.device_port = device_port
        self.participants = {}  # aggregator id -> its current session (Participant)
        self.standings = {}  # aggregator id -> Standing (its limits, across sessions)
        self.open = None  # the OpenSlot whose gate is open
        self.cleared = {}  # slot name -> Cleared, until its deadline
        # An aggregator whose reputation (hub/store/views.py: fills it confirmed, of those
        # it was given) is below this bids no more (hub.toml min_aggregator_reputation).
        self.min_reputation = min_reputation
        self.reputation = {}  # key id -> its record, as of the open slot
        self.reputations = Reputations()  # tallies them without a scan of the store
        self.funding = None  # margin checks and requests, when the hub settles (use_margin)
        # Margin is paid back only while every book that holds margin is known: a starting
        # hub (hub/service.py) sets this False until it has resumed a gated slot.
        self.paying_back = True
        self._read_at = 0.0
        self.refused = Counts(("subscribe", "bid", "contract", "contracts", "message", *FUNDING))

    def use_margin(self, margin):
        """The hub settles as clearing house (hub/integrations/settlement/margin.py): from
        now on a bid must be covered by its aggregator's margin (hub/market/funding.py)."""
        self.funding = Funding(margin, self._refuse, self._committing)

    def _committing(self):
        return (self.open, self.cleared) if self.paying_back else None

    # --- sessions ------------------------------------------------------------------

    def admitted(self, key_id):
        """Its name, or None when it may not trade here (not admitted, or revoked)."""
        self._follow_controls()
        if self.controls.revoked(key_id):
            return None
        return self.names.get(key_id) or self.controls.admitted().get(key_id)

    def join(self, key_id, send, close=None):
        """An authenticated aggregator's session; a new one ends its old one."""
        name = self.admitted(key_id)
        if name is None:
            raise Refused("aggregator %d is not admitted to market %s, or was revoked"
                          % (key_id, self.market_name))  # fmt: skip
        standing = self.standings.get(key_id)
        if standing is None:
            standing = self.standings[key_id] = Standing(key_id)
        old = self.participants.get(key_id)
        participant = Participant(key_id, name, send, close, standing)
        self.participants[key_id] = participant
        if old is not None and old.close is not None:
            old.close()  # one session per aggregator: the newest
        log.info("market: aggregator %d (%s) joined", key_id, name)
        return participant

    async def quorum(self, need):
        """Until `need` aggregators are in the market (hub.min_aggregators: no slot opens
        with fewer)."""
        if len(self.participants) >= need:
            return
        log.info("market: waiting for %d aggregators to open a slot (%d in the market)",
                 need, len(self.participants))  # fmt: skip
        while len(self.participants) < need:
            await asyncio.sleep(0.1)
        log.info("market: %d aggregators in: trading", len(self.participants))

    def leave(self, participant):
        if self.participants.get(participant.key_id) is participant:
            del self.participants[participant.key_id]
            log.info("market: aggregator %d (%s) left", participant.key_id, participant.name)

    def allow(self, participant, size):
        """Before a message of `size` bytes is parsed: a token per 16 KiB of it, beyond
        the one each message takes (a flood of big messages costs what it weighs)."""
        return participant.standing.take(size // 16384)

    def received(self, participant, msg):
        """One authenticated message from an aggregator: acted on, or refused."""
        if self.participants.get(participant.key_id) is not participant:
            return  # a session another replaced: it is being closed
        kind, ref = msg.get("type"), msg.get("ref")
        try:
            if not participant.standing.take():
                raise Refused("over the rate limit (%g messages/s)" % LIMITS["rate"])
            if self.admitted(participant.key_id) is None:
                self._end(participant)
                raise Refused("aggregator %d was revoked" % participant.key_id)
            if kind == "subscribe":
                self._subscribe(participant)
            elif kind == "bid":
                self._bid(participant, msg)
            elif kind == "contract":
                with self.store.transaction():  # the report's states: one commit, then
                    answer = self._contract(participant, msg)  # the answer
                participant.send(answer)
            elif kind == "contracts":
                self._contracts(participant, msg)
            elif kind in FUNDING:
                if self.funding is None:
                    raise Refused("market %s does not settle on chain: no margin to keep"
                                  % self.market_name)  # fmt: skip
                self.funding.received(participant, msg)
            else:
                raise Refused("unknown message type %r" % (kind,))
        except Refused as exc:
            self._refuse(participant, kind, str(exc), msg.get("slot"), ref)

    def _subscribe(self, participant):
        participant.subscribed = True
        terms = None if self.funding is None else self.funding.terms(participant.key_id)
        participant.send({"type": "welcome", "market": self.market_name,
                          "aggregator": participant.key_id, "name": participant.name,
                          "margin": terms})  # fmt: skip
        if self.open is not None and time.time() < self.open.gate_at:
            participant.send(self._slot_message(self.open))

    # --- the slot --------------------------------------------------------------------

    def open_slot(self, name, start, gate_at, offers, signal):
        """The offers are in: tell every subscribed aggregator. offers: [{"device", "kwh",
        "reserve", "max_kw", "address"}] (and "port", when not the batteries' ETP port)."""
        # Reputations as of now: the aggregators' (for the threshold), the batteries' (for
        # strategies: delivered / promised, in the offer).
        self.reputation, batteries = self.reputations.read(self.store)
        listed = {
            o["device"]: {"port": self.device_port, **o,
                          "reputation": round(batteries.get(o["device"], 1.0), 4)}
            for o in offers
        }  # fmt: skip
        self.open = OpenSlot(name, start, gate_at, listed, signal)
        # A restarted hub reopens a slot with the layers its predecessor took: they count
        # against the limits and the margin as they did before.
        for layer in self.market.book(name).bids:
            self.open.layers[layer.owner] = self.open.layers.get(layer.owner, 0) + 1
            if self.funding is not None:
                cost = self.funding.margin.cost(layer.price, layer.quantity)
                self.open.spent[layer.owner] = self.open.spent.get(layer.owner, 0) + cost
        self._broadcast(self._slot_message(self.open))

    def _slot_message(self, slot):
        return {"type": "slot", "slot": slot.name, "start": slot.start, "gate": slot.gate_at,
                "signal": slot.signal, "offers": list(slot.offers.values())}  # fmt: skip

    def _bid(self, participant, msg):
        slot, layers = self.open, msg.get("layers")
        if slot is None or msg.get("slot") != slot.name:
            raise Refused("slot %r is not open for bids" % (msg.get("slot"),))
        if time.time() >= slot.gate_at:
            raise Refused("late: the gate of slot %s closed" % slot.name)
        if self.controls.get("paused.%s" % participant.name):
            raise Refused("paused by the market's operator")
        record = self.reputation.get(participant.key_id)
        if record is not None and record["reputation"] < self.min_reputation:
            raise Refused(
                "reputation %.2f is below this market's %.2f (%d fills confirmed, "
                "%d left unconfirmed)"
                % (
                    record["reputation"],
                    self.min_reputation,
                    record["confirmed"],
                    record["withdrawn"],
                )
            )
        if not isinstance(layers, list) or not layers:
            raise Refused("layers must be a non-empty list")
        if len(layers) > LIMITS["layers_per_message"]:
            raise Refused("%d layers in one message (the limit is %d)"
                          % (len(layers), LIMITS["layers_per_message"]))  # fmt: skip
        mine = slot.layers.setdefault(participant.key_id, 0)
        if mine + len(layers) > LIMITS["layers_per_slot"]:
            raise Refused("over %d layers in slot %s" % (LIMITS["layers_per_slot"], slot.name))
        checked = [_layer(slot, layer, i) for i, layer in enumerate(layers)]  # all, first
        if self.funding is not None:  # covered by its margin, or refused whole
            self.funding.check(participant.key_id, checked, slot, self.cleared)
        added, refused = 0, []
        with self.store.transaction():  # one commit for the message's layers
            for device, price, kwh, layer_id in checked:
                ref = "bid:%d:%d" % (device, layer_id)
                try:
                    self.market.bid(slot.name, participant.key_id, price, kwh, ref=ref)
                except ValueError as exc:  # its id was used before, with other terms
                    refused.append([layer_id, str(exc)])
                else:
                    added += 1
        slot.layers[participant.key_id] = mine + added
        participant.send({"type": "bid_result", "ref": msg.get("ref"), "slot": slot.name,
                          "accepted": added, "refused": refused})  # fmt: skip
        for layer_id, why in refused[:3]:
            self._refuse(participant, "bid", "layer %d: %s" % (layer_id, why), slot.name,
                         msg.get("ref"), answer=False)  # fmt: skip

    def close_slot(self, name, start, result, trades, bound):
        """The gate closed and the book cleared: each buyer gets its fills, everyone the
        clearing. bound: {(device, buyer)} already holding a contract (a restarted hub)."""
        if self.open is not None and self.open.name == name:
            offers = self.open.offers
            self.open = None
        else:  # resumed after a restart: where to reach the batteries, from the store
            offers = {d["id"]: {"device": d["id"], "address": d["address"],
                                "port": self.device_port, "max_kw": 0.0}
                      for d in self.store.devices()}  # fmt: skip
        fills = {}
        for trade in trades:
            if (trade.battery, trade.buyer) not in bound:
                key = (trade.buyer, trade.battery)
                fills[key] = fills.get(key, 0.0) + trade.kwh
        cleared = self.cleared[name] = Cleared(name, start, result.price, fills)
        mine = {}
        for (buyer, device), kwh in fills.items():
            offer = offers.get(device, {"device": device, "address": "", "port": 0})
            mine.setdefault(buyer, []).append({**offer, "kwh": round(kwh, 6)})
        for buyer, their in mine.items():
            participant = self.participants.get(buyer)
            if participant is not None:
                participant.send({"type": "fills", "slot": name, "start": start,
                                  "price": result.price, "fills": their})  # fmt: skip
        self._broadcast({"type": "clearing", "slot": name, "price": result.price,
                         "volume_kwh": result.volume_kwh,
                         "bid_layers": sum(1 for o in self.market.book(name).layers
                                           if o.side == BID)})  # fmt: skip
        return cleared

    def settled(self, name):
        """Every fill of the slot reported Confirmed or Withdrawn (the buyers are done)."""
        cleared = self.cleared.get(name)
        return cleared is None or cleared.settled()

    def finish(self, name):
        """The slot's deadline passed (Cleared.finish). -> {(buyer, device): (id, state)}."""
        cleared = self.cleared.pop(name, None)
        return {} if cleared is None else cleared.finish(self.ledger)

    # --- contracts -------------------------------------------------------------------

    def _contracts(self, participant, msg):
        """Contract reports in one message (the buyer's reports of one moment): one
        commit for all, then one answer with each report's, in order (an error for a
        refused one). Each report costs a token, as a message of its own would."""
        reports = msg.get("reports")
        if not isinstance(reports, list) or not reports:
            raise Refused("reports must be a non-empty list")
        if len(reports) > LIMITS["reports_per_message"]:
            raise Refused("%d reports in one message (the limit is %d)"
                          % (len(reports), LIMITS["reports_per_message"]))  # fmt: skip
        if not participant.standing.take(len(reports) - 1):
            raise Refused("over the rate limit (%g reports/s)" % LIMITS["rate"])
        answers, refused = [], []
        with self.store.transaction():  # every report's states: one commit
            for report in reports:
                ref = report.get("ref") if isinstance(report, dict) else None
                try:
                    if not isinstance(report, dict):
                        raise Refused("a report is an object")
                    answers.append(self._contract(participant, report))
                except Refused as exc:
                    answers.append({"type": "error", "ref": ref, "what": "contract",
                                    "why": str(exc)[:300]})  # fmt: skip
                    refused.append((str(exc), report))
        participant.send({"type": "contract_results", "ref": msg.get("ref"), "results": answers})
        for why, report in refused[:3]:
            slot = report.get("slot") if isinstance(report, dict) else None
            self._refuse(participant, "contract", why, slot, None, answer=False)

    def _contract(self, participant, msg):
        slot = msg.get("slot")
        cleared = self.cleared.get(slot) if isinstance(slot, str) else None
        if cleared is None:
            raise Refused("slot %r is not being bought" % (str(slot)[:100],))
        return cleared.report(participant.key_id, msg, self.ledger, self.store)

    # --- refusals and broadcasts -------------------------------------------------------

    def refuse(self, participant, what, why):
        """A message refused before it was read (the transport's: too heavy)."""
        if self.participants.get(participant.key_id) is participant:
            self._refuse(participant, what, why, None, None)

    def _refuse(self, participant, what, why, slot, ref, answer=True):
        """One `error` answer; one audit row (up to refusal_rows_per_s a second per
        aggregator, the rest counted into the next row); one log line a second at most."""
        what, why = str(what)[:40], str(why)[:300]
        self.refused.add(what)  # by type, for /metrics ("message": too heavy; unknown: "other")
        if answer:
            participant.send({"type": "error", "ref": ref, "what": what, "why": why})
        standing = participant.standing  # the counters are the aggregator's, not the session's
        held = standing.audit()
        if held is None:
            return  # counted, into its next row
        if held:
            why = "%s (and %d more refused since)" % (why, held)
        self.store.record_refusal(standing.key_id, what, why,
                                  slot if isinstance(slot, str) else None)  # fmt: skip
        if standing.rows_this_second == 1:
            log.info("market: refused %s of aggregator %d: %s", what, standing.key_id, why)

    def _broadcast(self, msg):
        for participant in list(self.participants.values()):
            if participant.subscribed and self.admitted(participant.key_id) is not None:
                participant.send(msg)

    def _end(self, participant):
        """A revoked aggregator's session ends: it hears the market no more."""
        self.leave(participant)
        if participant.close is not None:
            participant.close()

    def _follow_controls(self):
        now = time.monotonic()
        if now - self._read_at >= 1.0:  # other processes write them (`gridbid hub revoke`)
            self._read_at = now
            self.controls.refresh()
            for key_id, participant in list(self.participants.items()):
                if self.controls.revoked(key_id):
                    self._end(participant)


def _layer(slot, layer, index):
    """A bid layer as sent -> (device, price, kWh, layer id); Refused names the fault."""
    if not isinstance(layer, dict):
        raise Refused("layer %d is not an object" % index)
    device, price, kwh, layer_id = (layer.get(k) for k in ("device", "price", "kwh", "id"))
    offer = slot.offers.get(device)
    if offer is None:
        raise Refused(
            "layer %d: battery %r offered nothing in slot %s" % (index, device, slot.name)
        )
    if not within(price, message.MAX_PRICE) or price <= 0:
        raise Refused("layer %d: price must be a positive c/kWh" % index)
    if not within(kwh, offer["kwh"] + 1e-9) or kwh <= 0:
        raise Refused("layer %d: kwh must be within the %.4f kWh offered" % (index, offer["kwh"]))
    if not whole(layer_id, 2**53):
        raise Refused("layer %d: id must be a whole number (yours, unique in the slot)"
                      % index)  # fmt: skip
    return device, float(price), float(kwh), layer_id
