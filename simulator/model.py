"""The experiment's model of the owners' side: batteries that offer at the firmware's
own reserve (firmware/reserve.py, loaded from the file the devices run), the
exogenous price signal, and the tally of what sold. simulator/experiment.py runs it
in process; simulator/experiment_live.py against batteries on the VM."""

import importlib.util
import math
import random
import sys

from aggregator import strategies
from simulator import vm

FLOOR, SPREAD, MARGIN = 14.0, 6.0, 1.0  # c/kWh: owners' floor (the Golang prototype's)
SLOT_H, MAX_KW, MIN_SOC, SOLAR_KWH = 0.5, 5.0, 20.0, 2.5
HEALTH_BELOW = ((60.0, 2), (80.0, 1))  # firmware/devices.py: SoH < 60 poor (2), < 80 degraded (1)


def firmware(name):
    """firmware/<name>.py, the module the devices run. Loaded from its file, not by
    putting firmware/ on sys.path, where its `config` or `store` would shadow others."""
    key = "gridbid_firmware_" + name
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, vm.FIRMWARE / (name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def price_signal(slot, p_balance=15.0, p_con=4.0, k=1.5, slots_per_day=48):
    """The market's indicative price, c/kWh: D/S swings by e^+-0.6 over the day; the
    signal rises with demand and stays within p_balance +- p_con."""
    log_ratio = 0.6 * math.sin(2 * math.pi * slot / slots_per_day)
    return round(2 / math.pi * p_con * math.atan(k * log_ratio) + p_balance, 4)


class Battery:
    """One owner's battery, in process: its offer, at the firmware's reserve, and SoC."""

    def __init__(self, device_id, seed, floor=FLOOR):
        rng = random.Random("%s/battery/%d" % (seed, device_id))
        self.device_id, self.floor = device_id, floor
        self.capacity = rng.choice((5.0, 10.0, 13.5))
        self.remaining = self.capacity * rng.uniform(40.0, 95.0) / 100
        self.soh = rng.uniform(50.0, 100.0)
        self.health = next((code for below, code in HEALTH_BELOW if self.soh < below), 0)
        self.solar = random.Random("%s/solar/%d" % (seed, device_id))  # same sun for every N

    def soc_pct(self):
        return 100.0 * self.remaining / self.capacity

    def offer(self, slot, signal):
        rules = firmware("reserve")
        reserve = rules.reserve_price(self.floor, self.soc_pct(), self.health, signal)
        kwh = round(min(rules.offer_kwh(self.remaining, self.capacity, MIN_SOC, 100.0),
                        MAX_KW * SLOT_H), 4)  # fmt: skip
        if reserve is None or kwh <= 0:
            return None
        return strategies.Offer(self.device_id, kwh, reserve, slot, signal)

    def deliver(self, kwh, recharge=False):
        self.remaining = max(0.0, self.remaining - kwh)
        if recharge:
            self.remaining = min(self.capacity, self.remaining + self.solar.uniform(0, SOLAR_KWH))
        return kwh


class Tally:
    """Offers and sales of one run -> its statistics (prices weighted by kWh sold)."""

    def __init__(self, slots):
        self.auctions = self.sold = 0
        self.offered = 0.0
        self.rows = []  # (kWh sold, price, theory, reserve, bidders)
        self.per_slot = [[0.0, 0.0] for _ in range(slots)]  # [revenue c, kWh]

    def add(self, slot, offer, sales, theory, bidders):
        """sales: [(kWh, price)] of the auction's winners (one when bids take all)."""
        self.auctions += 1
        self.offered += offer.kwh
        self.sold += bool(sales)
        for kwh, price in sales:
            self.rows.append((kwh, price, theory(offer.reserve, bidders), offer.reserve, bidders))
            self.per_slot[slot][0] += price * kwh
            self.per_slot[slot][1] += kwh

    def stats(self):
        rows, sold = self.rows, sum(r[0] for r in self.rows)

        def mean(i):
            return sum(r[0] * r[i] for r in rows) / sold if sold else None

        price, expected, se = mean(1), mean(2), None
        if sold:  # standard error of the kWh-weighted mean of (price - theory)
            d = price - expected
            se = math.sqrt(sum((r[0] * (r[1] - r[2] - d)) ** 2 for r in rows)) / sold
        return {
            "mean_price": price, "theory_price": expected, "mean_reserve": mean(3),
            "diff": None if price is None else price - expected, "diff_se": se,
            "sold_share": sold / self.offered if self.offered else 0.0,
            "kwh_offered": self.offered, "kwh_sold": sold, "auctions": self.auctions,
            "auctions_sold": self.sold, "revenue_c": sum(r[0] * r[1] for r in rows),
            "mean_bidders": sum(r[4] for r in rows) / len(rows) if rows else 0.0,
            "per_slot": [rev / kwh if kwh else None for rev, kwh in self.per_slot],
        }  # fmt: skip
