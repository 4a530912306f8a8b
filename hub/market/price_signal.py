"""Dynamic price signal: an indicative price for a slot from its order book's
demand/supply balance, published before (and between) clearings so batteries
and aggregators can see which way the market leans.

    p = (2/pi) * p_con * atan(k * ln(D / S)) + p_balance

D and S are the kWh demanded (bids) and offered (asks). At D == S the price
is p_balance; more demand than supply raises it, oversupply lowers it; atan
keeps it strictly inside p_balance +- p_con however lopsided the book is
(the result is also clamped to that band, against float rounding).

The correction (GUIDE.md section 1; seed 001 section 2.2): the GridTokenX
spec prints `(pi/2) * p_con * atan(k * ln(R))` with R the supply-to-demand
ratio S/D. pi/2 makes the swing reach (pi/2)^2 * p_con ~ 2.47 p_con, not the
intended p_con: atan ranges over (-pi/2, pi/2), so the factor that maps it
onto (-1, 1) is 2/pi. And ln(S/D) has the wrong sign: oversupply (S > D)
would raise the price. The public implementation used tanh in place of atan
and kept ln(S/D), so it also raised the price on oversupply. Here: 2/pi and
ln(D/S); the tests check the band and the direction.

An empty side must not send the price to the rail or divide by zero, so
D/S is clamped to [1/ratio_limit, ratio_limit]: an empty bid side reads as
the largest oversupply the signal distinguishes, an empty ask side as the
largest shortage, and an empty book as balanced (p_balance).
"""

import math

from hub.market import finite


class PriceSignal:
    """p_balance: the price (c/kWh) when demand equals supply, finite.
    p_con: the most the signal moves away from p_balance (c/kWh), >= 0.
    k: how fast it moves with ln(D/S), > 0.
    ratio_limit: D/S is clamped to [1/ratio_limit, ratio_limit], > 1."""

    def __init__(self, p_balance, p_con, k=1.0, ratio_limit=10.0):
        self.p_balance = finite("p_balance", p_balance)
        self.p_con = finite("p_con", p_con)
        self.k = finite("k", k)
        self.ratio_limit = finite("ratio_limit", ratio_limit)
        if self.p_con < 0:
            raise ValueError("p_con must be >= 0 c/kWh, not %r" % (p_con,))
        if self.k <= 0:
            raise ValueError("k must be > 0, not %r" % (k,))
        if self.ratio_limit <= 1:
            raise ValueError("ratio_limit must be > 1, not %r" % (ratio_limit,))
        self.low = self.p_balance - self.p_con
        self.high = self.p_balance + self.p_con

    def ratio(self, demand_kwh, supply_kwh):
        """D/S clamped to [1/ratio_limit, ratio_limit]; 1 when both are 0."""
        demand = finite("demand (kWh)", demand_kwh)
        supply = finite("supply (kWh)", supply_kwh)
        if demand < 0 or supply < 0:
            raise ValueError("demand and supply must be >= 0 kWh, not %r, %r" % (demand, supply))
        if supply == 0:
            return 1.0 if demand == 0 else self.ratio_limit
        return min(max(demand / supply, 1 / self.ratio_limit), self.ratio_limit)

    def price(self, demand_kwh, supply_kwh):
        """The signal (c/kWh) for `demand_kwh` bid against `supply_kwh` offered."""
        swing = (2 / math.pi) * self.p_con * math.atan(self.k * math.log(
            self.ratio(demand_kwh, supply_kwh)
        ))  # fmt: skip
        return min(max(self.p_balance + swing, self.low), self.high)

    def from_book(self, bids, asks):
        """The signal for an order book: D = the bids' kWh, S = the asks' kWh
        (anything with `.quantity`, e.g. auction Orders or a clearing's leftovers)."""
        demand = math.fsum(order.quantity for order in bids)
        supply = math.fsum(order.quantity for order in asks)
        return self.price(demand, supply)

    def __repr__(self):
        return "PriceSignal(p_balance=%r, p_con=%r, k=%r, ratio_limit=%r)" % (
            self.p_balance, self.p_con, self.k, self.ratio_limit,
        )  # fmt: skip
