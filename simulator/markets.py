"""The experiment's markets: how a slot's offers meet the aggregators' bids.

Every market has trade(slot, offers, buyers, rng) -> Traded: the sales, the buyers'
surplus, how many bid, and the slot's signal for the next Queries.

- HubMarket: what `gridbid hub run` runs. Offers enter hub/market/maker.py's
  MarketMaker as asks at their reserve, each buyer's bid (its strategy, as
  aggregator/trader.py asks it) as a bid layer; at the gate the maker clears the
  pooled book at one price (hub/market/clearing.py) and pairs the fills into
  trades; buyers learn through strategies.observe_clearing, as the trader does.
  The pooled book trades one good: a layer's worth (what its bidder would pay per
  kWh) counts for whatever kWh the layer is filled with, from any battery, also
  under the premium and correlated models, which draw it for one battery.
  The same code path as the hub without sockets, links or a disk: its store is
  BookStore (the book in memory). The price signal is the hub's: after each
  clearing the maker's signal over the book (D = all bid layers' kWh, S = the
  asks') goes with the next Queries, and batteries ask at least 90 % of it.
- BilateralMarket: each battery runs its own sealed-bid auction (firmware/
  auction.py: the best bids at or above the reserve win at their own prices), the
  first build's model. Its signal is exogenous (model.price_signal's daily cycle).
- PostedMarket: one buyer posts a price per offer (the baselines).

THEORY OF THE HUB'S MIDPOINT UNIFORM PRICE (checked by Monte Carlo in
tests/simulator/test_markets.py). Take m asks of q kWh at one reserve r and N
buyers bidding q kWh on each, bids i.i.d. uniform on [r, r + a] (a = s for
truthful bidders with worths uniform on [r, r + s]; a = s (n-1)/n for value
bidders, who shade so). All Nm bids are above r, so all m asks fill and the top m
bids take them; the price is the middle of the competitive interval, between the
m-th highest bid b(m) (the last filled) and b(m+1) (the best left out; r when
N = 1). The k-th highest of n uniforms has mean (n + 1 - k)/(n + 1), so

    E[price] = r + a (2m(N - 1) + 1) / (2(Nm + 1))

which is r + a (2N - 1)/(2N + 2) for one offer (m = 1), r + a/(2(m + 1)) for one
buyer, and tends to r + a (N - 1)/N, the (1 - 1/N) quantile of the bids, as m
grows: the price where N buyers' demand N m (1 - F(p)) meets the m offers. For
the experiment's books (reserves differ, worths relative to a level) the same
large-market reasoning gives the price where the expected demand
D(p) = N sum_j q_j P(bid_j >= p) meets the supply S(p) = sum_j q_j [r_j <= p]:
uniform_theory computes it per slot. Unlike first-price (r + s(N-1)/(N+1)), with
truthful bids the single buyer already pays above the reserve (the midpoint), and
the price rises towards the competitive (N-1)/N quantile rather than the expected
second-highest worth.
"""

from collections import namedtuple

import numpy as np

from aggregator import strategies
from hub.market.clearing import ASK
from hub.market.maker import MarketMaker
from simulator.model import firmware, price_signal

# sold: [(device, kWh, price c/kWh, theory c/kWh or None)]; buyers_c: the buyers'
# surplus in cents (sum of (worth - price) x kWh where a worth is known); bidders:
# bids per offer; signal: what the next slot's Queries carry.
Traded = namedtuple("Traded", "sold buyers_c bidders signal")
SLOT_S, GATE_S = 1800, 300
FIRST_SLOT = 1_000_000  # slot starts are whole multiples of SLOT_S from here


class BookStore:
    """The experiment's stand-in for the hub's SQLite store (hub/store): it keeps
    nothing, so MarketMaker keeps each book in memory. Persistence is not the
    mechanism; tests/simulator/test_markets.py clears the same slots through the
    real Store and gets the same trades."""

    def record_offer(self, device_id, slot, kwh, reserve, at=None):
        pass

    def record_bid(self, slot, order_id, side, owner, price, kwh, ref=None, at=None):
        pass

    def bids(self, slot, side=None):
        return []

    def record_price_signal(self, price, demand, supply, slot=None, at=None):
        pass

    def record_trades(self, clearing_id, slot, fills, price, at=None):
        pass


class HubMarket:
    """The hub's pooled uniform-price book per slot (see the module docstring)."""

    name = "hub"

    def __init__(self, store=None, theory=None, signal=None, follow_signal=True):
        self.maker = MarketMaker(store or BookStore(), "experiment", SLOT_S, GATE_S, signal)
        self.signal = 0.0  # the hub's first Queries carry none
        self.theory = theory  # (asks, bidders) -> the slot's expected price, or None
        self.follow_signal = follow_signal  # False: batteries ask their own reserve

    def trade(self, slot, offers, buyers, rng):
        start = (FIRST_SLOT + slot) * SLOT_S
        name = self.maker.grid.slot_name(self.maker.name, start)
        for offer in offers:
            self.maker.offer(name, offer.device_id, offer.kwh, offer.reserve,
                             ref="offer:%d" % offer.device_id)  # fmt: skip
        bids, worth, count = {}, {}, 0
        for buyer in rng.sample(buyers, len(buyers)):  # who reaches the hub first
            mine = bids[buyer.name] = {}
            for offer in offers:
                bid = buyer.bid(offer)
                if bid is not None:
                    mine[offer.device_id] = (offer, bid)
                    layer = self.maker.bid(name, buyer.name, bid.price, bid.kwh)
                    worth[layer.order_id] = bid.worth
                    count += 1
        result, trades = self.maker.close(name, start - GATE_S)
        self.signal = self.maker.price_signal(name)[0]
        won = {}
        for trade in trades:
            mine = won.setdefault(trade.buyer, {})
            mine[trade.battery] = mine.get(trade.battery, 0.0) + trade.kwh
        for buyer in buyers:
            strategies.observe_clearing(buyer, bids[buyer.name], won.get(buyer.name, {}),
                                        result.price)  # fmt: skip
        theory = self.theory(offers, len(buyers)) if self.theory and result.price else None
        sold, buyers_c = [], 0.0
        for order_id, owner, side, kwh in result.fills:
            if side == ASK:
                sold.append((owner, kwh, result.price, theory))
            elif worth[order_id] is not None:
                buyers_c += (worth[order_id] - result.price) * kwh
        return Traded(sold, buyers_c, count / len(offers) if offers else 0.0,
                      self.signal if self.follow_signal else 0.0)  # fmt: skip


class BilateralMarket:
    """A sealed-bid auction per battery, the battery's own (firmware/auction.py)."""

    name = "bilateral"

    def __init__(self, theory=None):
        self.signal = price_signal(0)
        self.auction = firmware("auction")
        self.theory = theory  # (reserve, bids) -> the auction's expected price, or None
        self.message_id = 0

    def trade(self, slot, offers, buyers, rng):
        now, sold, buyers_c, count = slot * 1_800_000, [], 0.0, 0
        for offer in offers:
            auction, bids = self.auction.Auction(offer.reserve, offer.kwh, 300, now), {}
            for at, buyer in enumerate(rng.sample(buyers, len(buyers))):  # arrival order
                bid = bids[buyer.name] = buyer.bid(offer)
                if bid is not None:
                    self.message_id += 1
                    auction.add(self.auction.Bid(buyer.name, self.message_id, bid.price,
                                                 bid.kwh, now + at))  # fmt: skip
            winners, _rejects = auction.close()
            got = {bid.peer: (kwh, bid.price) for bid, kwh in winners}
            top = winners[0][0].price if winners else None  # the published winning price
            bidders = sum(bid is not None for bid in bids.values())
            count += bidders
            theory = self.theory(offer.reserve, bidders) if self.theory else None
            for buyer in buyers:
                kwh, price = got.get(buyer.name, (0.0, None))
                mine = bids[buyer.name]
                buyer.observe(
                    strategies.Outcome(
                        offer.device_id,
                        offer.slot,
                        kwh > 0,
                        mine and mine.price,
                        kwh,
                        top,
                        kwh,
                        kwh,
                    )
                )
                if kwh > 0:
                    sold.append((offer.device_id, kwh, price, theory))
                    if mine.worth is not None:
                        buyers_c += (mine.worth - price) * kwh
        return Traded(sold, buyers_c, count / len(offers) if offers else 0.0,
                      price_signal(slot + 1))  # fmt: skip


class PostedMarket:
    """One buyer, a take-it-or-leave-it price per offer (strategies.SingleUtility):
    its own (the reserve, or its tariff), or, with post, post(slot, offers) -> the
    slot's one price (0: it buys nothing)."""

    name = "posted"
    signal = 0.0  # no market, no signal: batteries ask their own reserve

    def __init__(self, post=None):
        self.post = post

    def trade(self, slot, offers, buyers, rng):
        (buyer,) = buyers
        if self.post is not None:
            buyer.posted = self.post(slot, offers)
        sold, buyers_c = [], 0.0
        for offer in offers:
            bid = buyer.bid(offer)
            won = bid is not None
            buyer.observe(
                strategies.Outcome(
                    offer.device_id, offer.slot, won, bid and bid.price, bid.kwh if won else 0.0
                )
            )
            if won:
                sold.append((offer.device_id, bid.kwh, bid.price, None))
                if bid.worth is not None:
                    buyers_c += (bid.worth - bid.price) * bid.kwh
        return Traded(sold, buyers_c, 1.0, 0.0)


def uniform_expected(reserve, top, offers, buyers):
    """E[price] of the hub's clearing of `offers` equal asks at `reserve` against
    `buyers` bids on each, i.i.d. uniform on [reserve, reserve + top] (the module
    docstring derives it)."""
    m, n = offers, buyers
    return reserve + top * (2 * m * (n - 1) + 1) / (2 * (n * m + 1))


def uniform_theory(asks, buyers, shade, iterations=40):
    """The large-market clearing price of one slot: where the expected demand of
    `buyers` meets the supply. asks: [(reserve, kWh, low, width)], worths of the
    offer uniform on [low, low + width]; a buyer with worth w >= reserve bids
    reserve + shade (w - reserve) (1: truthful; (n-1)/n: a value bidder; 0: the
    reserve). -> c/kWh, or None when nothing would trade."""
    reserve, kwh, low, width = np.array(asks, dtype=float).T
    top = low + width

    def excess(p):  # expected demand - supply at p: it falls as p rises
        if shade > 0:
            need = np.where(p <= reserve, reserve, reserve + (p - reserve) / shade)
        else:
            need = np.where(p <= reserve, reserve, np.inf)
        share = np.clip((top - np.maximum(need, low)) / width, 0.0, 1.0)
        return buyers * float(kwh @ share) - float(kwh[reserve <= p].sum())

    lo, hi = float(reserve.min()), float(top.max())
    if hi < lo:
        return None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if excess(mid) >= 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
