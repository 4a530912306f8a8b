"""What energy is worth to the experiment's aggregators: the value models.

An aggregator's worth of a kWh (the most it pays) is its resale value less its
margin; the models say how worths are drawn, per aggregator k and offer j in slot t
(U: uniform on [0, 1], drawn independently unless said otherwise):

- private (the default): w = L_t + s U_kj. Each aggregator resells at its own price
  (its customers, its hedges), independent of the others' and of the battery's
  reserve: an offer whose reserve is above every worth does not sell.
- common: w = L_t + s C_t + n U_kj, with C_t one draw per slot shared by all
  aggregators (the wholesale price they all resell at) and n the private noise.
  With little noise the aggregators value alike, so a second one already bids
  what the energy is worth and more add little.
- correlated: w = L_t + s (c Z_j + (1 - c) U_kj), Z_j one draw per offer shared by
  all (where the battery is, and when it can deliver, is worth the same to all),
  c the correlation setting.
- premium (the first build's): w = r_j + s U_kj, always above the battery's reserve
  r_j, so everything sells; the textbook first-price auction's model, kept to check
  the theory (the gain it shows follows from s alone).

L_t is the level (a setting), or the price series of a CSV (time, c/kWh) at slot t
(cycled); s is the spread (a setting, or from the series: its P90 - P10). A
`asymmetry` of a c/kWh gives aggregator 1 (an incumbent) worths a above the rest.
The draws depend on the seed, the aggregator and the slot only, never on N, so runs
with different N share their random numbers as far as they can.
"""

import csv
import math
import random

MODELS = ("private", "common", "correlated", "premium")
LEVEL, SPREAD, NOISE, CORRELATION = 16.0, 6.0, 0.5, 0.5  # c/kWh, c/kWh, c/kWh, share


def read_series(path):
    """[c/kWh, ...] from a CSV of (time, c/kWh) rows; a header row and lines starting
    with # are skipped. ValueError names the file and line of a bad row."""
    prices, rows = [], 0
    try:
        with open(path, newline="") as file:
            for line, row in enumerate(csv.reader(file), 1):
                if not row or row[0].lstrip().startswith("#"):
                    continue
                rows += 1
                try:
                    price = float(row[1])
                except (IndexError, ValueError):
                    if rows == 1:
                        continue  # the header
                    raise ValueError(
                        "%s line %d: not `time, c/kWh`: %r" % (path, line, row)
                    ) from None
                if not math.isfinite(price) or not -1000 <= price <= 1000:
                    raise ValueError("%s line %d: %r c/kWh is not a price" % (path, line, row[1]))
                prices.append(price)
    except OSError as exc:
        raise ValueError("cannot read %s: %s" % (path, exc.strerror)) from None
    except UnicodeDecodeError:
        raise ValueError("%s is not a text CSV" % path) from None
    if len(prices) < 2:
        raise ValueError("%s: fewer than 2 prices" % path)
    return prices


def spread_of(series):
    """The spread a series calibrates: its P90 - P10 (at least 0.1 c/kWh)."""
    ordered = sorted(series)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return max(0.1, pick(0.9) - pick(0.1))


class Values:
    """One repeat's value model: draw(k) is aggregator k's resale values."""

    def __init__(self, model="private", seed=0, level=LEVEL, spread=SPREAD, noise=NOISE,
                 correlation=CORRELATION, series=None, asymmetry=0.0):  # fmt: skip
        if model not in MODELS:
            raise ValueError("values must be one of %s, not %r" % (", ".join(MODELS), model))
        if not spread > 0 or noise < 0 or not 0 <= correlation <= 1:
            raise ValueError("spread must be > 0, noise >= 0 and correlation 0..1")
        self.model, self.seed = model, seed
        self.spread, self.noise, self.correlation = spread, noise, correlation
        self.series, self.level_c, self.asymmetry = series, level, asymmetry
        self._shared = {}  # (slot,) or (slot, device) -> its shared draw

    def level(self, slot):
        return self.series[slot % len(self.series)] if self.series else self.level_c

    def _common(self, key):
        draw = self._shared.get(key)
        if draw is None:
            draw = self._shared[key] = random.Random("%s/shared/%r" % (self.seed, key)).random()
        return draw

    def worth(self, k, offer, rng):
        """Aggregator k's worth of a kWh of this offer (one draw from rng)."""
        s, u = self.spread, rng.random()
        if self.model == "premium":
            worth = offer.reserve + s * u
        elif self.model == "private":
            worth = self.level(offer.slot) + s * u
        elif self.model == "common":
            worth = self.level(offer.slot) + s * self._common(offer.slot) + self.noise * u
        else:
            c = self.correlation
            shared = self._common((offer.slot, offer.device_id))
            worth = self.level(offer.slot) + s * (c * shared + (1 - c) * u)
        return worth + self.asymmetry if k == 1 else worth

    def draw(self, k, margin):
        """Aggregator k's resale value per kWh, as strategies' value(offer, rng): its
        worth plus the margin it keeps."""
        return lambda offer, rng: self.worth(k, offer, rng) + margin

    def expected(self, offer, k=None):
        """The mean worth of an offer to aggregator k."""
        s, extra = self.spread, self.asymmetry if k == 1 else 0.0
        if self.model == "premium":
            return offer.reserve + s / 2 + extra
        if self.model == "common":
            return self.level(offer.slot) + s / 2 + self.noise / 2 + extra
        return self.level(offer.slot) + s / 2 + extra

    def uniform(self, offer):
        """(low, width) when worths of this offer are uniform on [low, low + width] and
        independent across aggregators (premium and private): what the theory needs;
        None for the models with a shared part, and with an incumbent."""
        if self.asymmetry or self.model not in ("premium", "private"):
            return None
        low = offer.reserve if self.model == "premium" else self.level(offer.slot)
        return low, self.spread
