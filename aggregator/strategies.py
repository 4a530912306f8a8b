"""How aggregators bid for a battery's offer, and what auction theory expects of it.

Every buyer has the same interface, so the experiment (simulator/experiment.py) and a
live aggregator drive them alike:

    bid = buyer.bid(Offer(device_id, kwh, reserve, slot, signal))   # -> Bid(price, kwh) or None
    buyer.observe(Outcome(device_id, slot, won, ...))                # after the auction closes

Prices are c/kWh, energy kWh, money cents. What all buyers share (Buyer):

- Budget (cents per slot) and capacity (kWh per slot): a bid holds price x kWh and
  its kWh until its outcome is observed, so even with many auctions open at once a
  buyer never commits more than it has; a bid shrinks to the kWh it can still pay
  for and take (the battery's auction accepts part of an offer). None = unlimited.
- Reputation: delivered / promised energy of the device across this buyer's
  contracts with it, starting from PRIOR_KWH of perfect delivery so one short
  contract does not condemn a device. Energy promised but not delivered must be
  bought again at the balancing price, so a kWh promised by a device with
  reputation q is worth q x value: bids fall for unreliable devices.

The strategies:

- ValueBidder: a private resale value per kWh (fixed, or drawn per offer), less a
  margin, is the most it will pay (its worth w = reputation x value - margin); it
  skips offers whose reserve is above w. Below w it bids the symmetric
  equilibrium of a first-price auction with n bidders whose worths are i.i.d.
  uniform on [r, r + s] with reserve r: b(w) = r + (w - r)(n - 1)/n (derivation at
  expected_price). With n = 1 it bids the reserve, the price a lone buyer needs in a
  battery's own auction (in the hub's pooled book, bids at the asks' own prices
  cross only up to the median reserve: a lone value bidder buys about half).
- AdaptiveBidder: knows neither n nor the value distribution. From the winning
  prices the market publishes it learns how high the best rival bids (a loss
  shows it, a win bounds it) and bids its best response, bounded by its worth:
  losses shade it up, wins down; the price signal is its first guess. Its fixed
  point is the equilibrium above. Deterministic: it draws nothing but its values.
- TruthfulBidder: bids its worth, the price-taker's strategy in a uniform-price
  market such as the hub's, where a bid moves the price only when it is marginal.
- Colluder: a cartel member; the cartel shares the batteries out and bids their
  reserves, so N colluders bid as one buyer bidding each reserve.
- SingleUtility: the baselines' one buyer, a take-it-or-leave-it posted price. With
  price=None it posts the reserve the battery announces (its QueryResponse carries
  it): the least a battery sells for, and all a sole buyer ever needs to pay. With
  a fixed tariff it buys only where the tariff covers the reserve. posted_price is
  the profit-maximising single price of a buyer that knows the slot's supply curve
  but not which battery asks what.

observe_clearing tells a buyer the outcome of a uniform-price clearing as the hub
does (aggregator/trader.py and the experiment share it).
"""

import math
import random
from collections import namedtuple

# The market's latest price signal rides in the Query (c/kWh; 0 = none); reputation is
# the market's record of the battery: delivered / promised kWh (1.0: no record).
Offer = namedtuple("Offer", "device_id kwh reserve slot signal reputation",
                   defaults=(0, 0.0, 1.0))  # fmt: skip
# worth: the most the buyer would pay per kWh, when it has one (its surplus is measured
# against it; None for a posted-price buyer without a value).
Bid = namedtuple("Bid", "price kwh worth", defaults=(None,))
# won: this buyer's bid won; price/kwh: what it bid and bought (kwh 0 when lost);
# winning_price: the auction's price when published (None: unsold or unknown);
# promised/delivered: kWh of the contract once it ran (delivered None: not yet known).
Outcome = namedtuple(
    "Outcome",
    "device_id slot won price kwh winning_price promised delivered",
    defaults=(None, 0.0, None, 0.0, None),
)

PRIOR_KWH = 5.0  # reputation's prior: this much energy delivered in full
_STEPS = 10000  # bids are in 1/100 of a cent and 0.1 Wh, rounded down (never above a bound)


def equilibrium_bid(worth, reserve, bidders):
    """The symmetric equilibrium bid of a first-price auction with `bidders`
    bidders whose worths are i.i.d. uniform on [reserve, reserve + s]."""
    return reserve + (worth - reserve) * (bidders - 1) / bidders


def expected_price(reserve, spread, bidders, active=None):
    """Expected winning bid when `active` (default: all) of the `bidders` a
    ValueBidder shades for bid, with worths i.i.d. uniform on [r, r + s].

    The highest of k i.i.d. U(0, 1) has mean k/(k + 1), and b(w) is increasing, so
    the winner is the highest worth and pays r + (w_max - r)(n - 1)/n:
        E[price] = r + s (n - 1)/n x k/(k + 1)        = r + s (n - 1)/(n + 1) at k = n,
    the textbook result (by revenue equivalence also E[second-highest worth], what
    an ascending auction would fetch). k < n happens when some buyers are out of
    budget or capacity, which does not depend on this auction's values.
    """
    k = bidders if active is None else active
    if k <= 0:
        return None
    return reserve + spread * (bidders - 1) / bidders * k / (k + 1)


def theory(kind, spread, bidders):
    """-> expected(reserve, k): the expected price of one auction won among k bids.

    value: r + s (n-1)/n x k/(k+1) for the n it shades for (r + s (n-1)/(n+1) when
    all n bid); adaptive: r + s (k-1)/(k+1), the equilibrium among the k that bid,
    the benchmark a learner is measured against; utility: r, the price it posts."""
    if kind == "value":
        return lambda reserve, k: expected_price(reserve, spread, bidders, k)
    if kind == "adaptive":
        return lambda reserve, k: expected_price(reserve, spread, k)
    return lambda reserve, k: reserve


class Buyer:
    """Budget, capacity, reputation and the bid/observe cycle; subclasses set price()."""

    def __init__(self, name, budget=None, capacity=None):
        for label, limit in (("budget", budget), ("capacity", capacity)):
            if limit is not None and limit < 0:
                raise ValueError("%s must be >= 0 or None (unlimited)" % label)
        self.name = name
        self.budget, self.capacity = budget, capacity
        self.slot = None
        self.spent = self.bought = 0.0  # this slot: cents paid, kWh bought
        self.holds = {}  # device_id -> Bid awaiting its outcome
        self._held = [0.0, 0.0]  # the holds' cents and kWh, kept with them: left() is O(1)
        self.last_worth = None  # the worth of the offer last priced (strategies with one)
        self.offers = {}  # device_id -> the latest Offer seen (bid or not)
        self.delivery = {}  # device_id -> [delivered kWh, promised kWh]

    def reputation(self, device_id):
        delivered, promised = self.delivery.get(device_id, (0.0, 0.0))
        return min(1.0, max(0.0, (delivered + PRIOR_KWH) / (promised + PRIOR_KWH)))

    def left(self):
        """(cents, kWh) this buyer may still commit in the current slot."""
        held_c, held_kwh = self._held
        money = math.inf if self.budget is None else self.budget - self.spent - held_c
        energy = math.inf if self.capacity is None else self.capacity - self.bought - held_kwh
        return max(0.0, money), max(0.0, energy)

    def _roll(self, slot):
        if slot != self.slot:
            self.slot, self.spent, self.bought = slot, 0.0, 0.0
            self.holds.clear()  # auctions of a past slot are over
            self._held = [0.0, 0.0]

    def _hold(self, device_id, bid):
        self._release(device_id)
        if bid is not None:
            self.holds[device_id] = bid
            self._held[0] += bid.price * bid.kwh
            self._held[1] += bid.kwh

    def _release(self, device_id):
        bid = self.holds.pop(device_id, None)
        if bid is not None:
            self._held[0] -= bid.price * bid.kwh
            self._held[1] -= bid.kwh
        return bid

    def bid(self, offer):
        """-> Bid(price, kwh) to send, or None to stay out of this auction."""
        self._roll(offer.slot)
        self._release(offer.device_id)  # a new offer replaces an unanswered one
        self.offers[offer.device_id] = offer
        self.last_worth = None
        price = self.price(offer)
        if price is None or price < offer.reserve or offer.kwh <= 0:
            return None
        price = max(offer.reserve, math.floor(price * _STEPS) / _STEPS)  # never above price()
        money, energy = self.left()
        kwh = min(offer.kwh, energy, money / price if price > 0 else math.inf)
        kwh = math.floor(round(kwh * _STEPS, 6))  # 1.2345 kWh stays 1.2345
        if kwh <= 0:
            return None
        bid = Bid(price, kwh / _STEPS, self.last_worth)
        self._hold(offer.device_id, bid)
        return bid

    def observe(self, outcome):
        """Learn from an auction's outcome (and, when known, the contract's delivery)."""
        held = self._release(outcome.device_id)
        if outcome.won and outcome.slot == self.slot:
            price = outcome.price if outcome.price is not None else held.price
            self.spent += price * outcome.kwh
            self.bought += outcome.kwh
        if outcome.delivered is not None:
            self.delivered(outcome.device_id, outcome.promised, outcome.delivered)
        offer = self.offers.get(outcome.device_id)
        if offer is not None:
            self.learn(offer, held, outcome)

    def delivered(self, device_id, promised, delivered):
        """A contract with this device ran: its metered kWh against the kWh promised."""
        if promised > 0:
            tally = self.delivery.setdefault(device_id, [0.0, 0.0])
            tally[0] += min(delivered, promised)
            tally[1] += promised

    def price(self, offer):
        raise NotImplementedError

    def learn(self, offer, bid, outcome):
        """Strategies that adapt override this; bid is None when this buyer stayed out."""


class _Valuing(Buyer):
    """A buyer with a resale value per kWh: a number, or draw(offer, rng) -> c/kWh."""

    def __init__(self, name, value, margin=1.0, rng=None, **limits):
        super().__init__(name, **limits)
        self.value, self.margin = value, margin
        self.rng = rng if rng is not None else random.Random(name)

    def worth(self, offer):
        """The most this buyer pays per kWh promised by this device."""
        value = self.value(offer, self.rng) if callable(self.value) else self.value
        self.last_worth = self.reputation(offer.device_id) * value - self.margin
        return self.last_worth


class ValueBidder(_Valuing):
    """Bids the first-price equilibrium for `bidders` bidders, never above its worth."""

    def __init__(self, name, value, margin=1.0, bidders=1, rng=None, **limits):
        if bidders < 1:
            raise ValueError("bidders must be >= 1")
        super().__init__(name, value, margin, rng, **limits)
        self.bidders = bidders

    def price(self, offer):
        worth = self.worth(offer)
        if worth < offer.reserve:
            return None
        return equilibrium_bid(worth, offer.reserve, self.bidders)


class AdaptiveBidder(_Valuing):
    """Learns how high the best rival bids, from published winning prices, and
    best-responds to it, never above its worth.

    It models the best rival bid's premium over the reserve, X, as G(x) = (x/a)^m
    on [0, a] (what m rivals bidding a share of uniform worths produce), and bids
    the premium that maximises (v - x) G(x) for its own worth premium v:
    x = v m/(m + 1), capped at a (above a it would win for sure). If the rivals
    play the equilibrium, a = s(N-1)/N and m = N-1, and this is the equilibrium
    bid: the learner's fixed point is the textbook one.
    - a: the highest premium seen beating it, plus a tick (a tie loses too); it
      decays by 0.2 % an auction, so a run of wins lowers its bids slowly (a win
      says only that the best rival bid less). A loss can only raise it.
    - m: maximum likelihood from recent auctions (weights decay by `memory` per
      auction): a loss shows X exactly (the winning premium), a win only shows
      X < its own bid. Losses raise m (shade up), wins lower it (shade down).
    - Before its first auction it takes the market's price signal as the going
      price: a = signal - reserve, at least a tick.
    """

    def __init__(self, name, value, margin=1.0, rng=None, memory=0.98, tick=0.05, **limits):
        super().__init__(name, value, margin, rng, **limits)
        self.memory, self.tick = memory, tick
        self.top = None  # a, c/kWh above the reserve
        self.exact = self.log_sum = 1.0  # decayed counts: prior m = 1 (one rival)

    def rivals(self):
        """The learnt m: how many rivals' worth of competition it expects."""
        return self.exact / self.log_sum

    def price(self, offer):
        worth = self.worth(offer)
        if worth < offer.reserve:
            return None
        if self.top is None:
            self.top = max(offer.signal - offer.reserve, self.tick)
        m = self.rivals()
        return offer.reserve + min(self.top, (worth - offer.reserve) * m / (m + 1))

    def learn(self, offer, bid, outcome):
        if self.top is None:
            self.top = self.tick
        if outcome.winning_price is None:  # unsold, or not published: nothing learnt
            return
        self.top *= 1 - (1 - self.memory) / 10
        exact = not outcome.won
        if exact:
            premium = outcome.winning_price - offer.reserve
            self.top = max(self.top, premium + self.tick)
        else:
            premium = outcome.price - offer.reserve
        share = min(max(premium, 1e-3), self.top) / self.top
        self.exact = self.memory * self.exact + exact
        self.log_sum = max(1e-6, self.memory * self.log_sum - math.log(share))


class TruthfulBidder(_Valuing):
    """Bids its worth. In a uniform-price market (the hub's) a bid sets the price only
    when it is the marginal one, so a small buyer gains little by shading: bidding the
    worth is the price-taker's strategy, and the benchmark for the hub's theory."""

    def price(self, offer):
        worth = self.worth(offer)
        return worth if worth >= offer.reserve else None


class Colluder(_Valuing):
    """One of `members` aggregators in a cartel that shares the batteries out (by device
    id) and bids each battery's reserve: together they bid as one buyer would."""

    def __init__(self, name, value, margin=1.0, index=0, members=1, rng=None, **limits):
        if not 0 <= index < members:
            raise ValueError("index must be 0 <= index < members")
        super().__init__(name, value, margin, rng, **limits)
        self.index, self.members = index, members

    def price(self, offer):
        if offer.device_id % self.members != self.index:
            return None
        return offer.reserve if self.worth(offer) >= offer.reserve else None


class SingleUtility(_Valuing):
    """A posted take-it-or-leave-it price: the reserve it is offered (price=None), or a
    tariff. With a value (as _Valuing's) it is a buyer that knows its worth: it takes
    only offers worth their price, unless `must_buy` (a utility obliged to take all at
    its tariff); without one it takes whatever accepts its price."""

    def __init__(self, name="utility", price=None, value=None, margin=1.0, rng=None,
                 must_buy=False, **limits):  # fmt: skip
        super().__init__(name, value, margin, rng, **limits)
        self.posted, self.must_buy = price, must_buy

    def price(self, offer):
        posted = offer.reserve if self.posted is None else self.posted
        worth = None if self.value is None else self.worth(offer)  # a draw per offer, always
        if posted < offer.reserve:
            return None
        if worth is not None and worth < posted and not self.must_buy:
            return None
        return posted


def posted_price(asks, worth):
    """The single price that maximises a buyer's profit (worth - p) x S(p) against a
    supply curve S(p) = kWh of the asks [(reserve, kWh)] at or below p: a buyer that
    knows the slot's supply and its own worth per kWh, not which battery asks what.
    The profit falls between reserves and jumps at each, so the best price is a
    reserve at or below the worth (None: every reserve is above it)."""
    best, best_profit, supply = None, 0.0, 0.0
    for reserve, kwh in sorted(asks):
        if reserve > worth:
            break
        supply += kwh
        profit = (worth - reserve) * supply
        if best is None or profit >= best_profit:  # at equal profit, the higher price
            best, best_profit = reserve, profit
    return best


def observe_clearing(buyer, bids, won, price):
    """Tell a buyer how a uniform-price clearing went for each of its bids, as the hub
    tells it: bids {device: (Offer, Bid)} it made for the slot, won {device: kWh} the
    batteries it was filled by, price the clearing price (None: nothing traded).

    The book is pooled: a layer bid for one battery is filled from whichever the
    clearing pairs it with, so which battery filled it says nothing of the bid. The
    clearing fills the highest layers first, all at one price: the kWh it was filled
    with go to its layers from the highest price down, never to a layer below the
    price. So each bid learns what the clearing did to it."""
    left = sum(won.values()) if price is not None else 0.0
    ranked = sorted(bids.items(), key=lambda item: (-item[1][1].price, item[0]))
    for device, (offer, bid) in ranked:
        got = min(bid.kwh, left) if left > 1e-9 and bid.price >= price - 1e-9 else 0.0
        left -= got
        buyer.observe(Outcome(device, offer.slot, got > 0, bid.price, got, price))
