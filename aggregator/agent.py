"""An aggregator agent: one identity (key id and key), one strategy, and its own
authenticated TCP session with every battery (transport.links.DeviceLink).

It bids into the market maker's slot books through its strategy
(aggregator/strategies.py), and when a slot clears it buys the energy it was allotted
from each battery over ETP: a Bid at the clearing price for its kWh, which the
battery's auction accepts (the price is at or above the reserve it offered at),
then a BidConfirm. The contract moves through the hub's Ledger only.
"""

import asyncio
import logging
import random

from aggregator import strategies
from protocol import frame, message
from transport.links import DeviceLink, QueueFull, now_ms

log = logging.getLogger(__name__)


def make_strategy(cfg, seed=None):
    name, limits = cfg["key_id"], {"budget": cfg["budget"], "capacity": cfg["capacity"]}
    rng = random.Random("%s/aggregator/%d" % (seed, name))
    value = _drawn(cfg["value"], cfg["spread"]) if cfg["spread"] else cfg["value"]
    if cfg["strategy"] == "value":
        return strategies.ValueBidder(
            name, value, cfg["margin"], bidders=cfg["bidders"], rng=rng, **limits
        )
    if cfg["strategy"] == "adaptive":
        return strategies.AdaptiveBidder(name, value, cfg["margin"], rng=rng, **limits)
    return strategies.SingleUtility(name, price=cfg["price"], **limits)


def _drawn(low, spread):
    """A resale value drawn per offer from [low, low + spread] (strategies' value form)."""

    def value(_offer, rng):
        return low + rng.uniform(0.0, spread)

    return value


class Agent:
    def __init__(self, cfg, keyring, hub, seed=None):
        self.cfg = cfg
        self.name, self.key_id = cfg["name"], cfg["key_id"]
        self.codec = frame.Codec(keyring, key_id=self.key_id)
        self.ids = message.MessageIds(now_ms())
        self.strategy = make_strategy(cfg, seed)
        self.hub = hub  # on_frame(agent, device_id, frame) for what is not an answer
        self.links = {}  # device id -> DeviceLink
        self._waiting = {}  # our message id -> Future of the battery's answer

    def link(self, device_id, address, port):
        """The session with this battery, opened (and kept up) on first use."""
        link = self.links.get(device_id)
        if link is None or link.address != address:
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

    def _received(self, link, got):
        # A battery signs with its device id and speaks only for itself: a frame on this
        # link from any other key (another battery's, or an aggregator's it could forge
        # while batteries hold aggregators' keys), or about another device, is dropped.
        if got.group or got.key_id != link.device_id or got.message.device_id != got.key_id:
            log.warning("%s dropped a frame from key %d about device %d on battery %d's link",
                        self.name, got.key_id, got.message.device_id, link.device_id)  # fmt: skip
            return
        waiter = self._waiting.pop(got.reply_to, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(got)
            return
        self.hub.on_frame(self, got)

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

    async def buy(self, ledger, device_id, kwh, price, kw, start, timeout_s):
        """Buy kWh of this battery at the clearing price. -> (contract id, state) or
        (None, why) when the battery did not accept."""
        bid = message.bid(self.ids.next(), device_id, price, round(kwh, 4))
        answer = await self.ask(device_id, bid, timeout_s)
        if answer is None:
            return None, "no answer"
        got = answer.message
        if got.message_type != message.BID_ACCEPT:
            return None, "rejected (code %d)" % got.termination_code
        deal = ledger.accepted(
            device_id, self.key_id, bid.message_id, got.sale_price,
            got.required_energy_amount, kw, start,
        )  # fmt: skip
        link = self.links[device_id]
        if not link.connected.is_set():
            ledger.withdrawn(deal.contract_id, "the link to battery %d is down" % device_id)
            return deal.contract_id, "TerminatedByAtn"
        confirm = message.bid_confirm(
            self.ids.next(), device_id, got.sale_price, got.required_energy_amount, kw
        )
        ledger.confirming(deal.contract_id, confirm.message_id)
        try:
            link.send(confirm, reply_to=got.message_id)
        except QueueFull:
            pass  # recorded as Confirmed: no report by the deadline makes it UnknownOutcome
        return deal.contract_id, "Confirmed"

    async def close(self):
        await asyncio.gather(*(link.close() for link in self.links.values()))
