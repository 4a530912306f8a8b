"""The experiment's model of the owners' side: batteries that offer at the firmware's
own reserve (firmware/reserve.py, loaded from the file the devices run), the
exogenous price signal of the bilateral market, and the tally of what sold.
simulator/experiment.py runs it in process; simulator/experiment_live.py against
batteries on the VM."""

import importlib.util
import math
import random
import sys

from aggregator import strategies
from simulator import vm

FLOOR, SPREAD, MARGIN = 14.0, 6.0, 1.0  # c/kWh: owners' floor (the Golang prototype's)
SLOT_H, MAX_KW, MIN_SOC, SOLAR_KWH = 0.5, 5.0, 20.0, 2.5
HEALTH_BELOW = ((60.0, 2), (80.0, 1))  # firmware/devices.py: SoH < 60 poor (2), < 80 degraded (1)


def firmware(name, own_name=False):
    """firmware/<name>.py, the module the devices run. Loaded from its file, not by
    putting firmware/ on sys.path, where its `config` or `store` would shadow others.
    own_name: registered as <name>, so firmware modules that import each other (sunspec
    imports modbus and register_map) find the ones loaded before them."""
    key = name if own_name else "gridbid_firmware_" + name
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

    def __init__(self, device_id, seed, floor=FLOOR, slot_kwh=MAX_KW * SLOT_H):
        """slot_kwh: the most a slot carries (a 30-min slot at 5 kW); solar scales with it."""
        rng = random.Random("%s/battery/%d" % (seed, device_id))
        self.device_id, self.floor, self.slot_kwh = device_id, floor, slot_kwh
        self.sun = SOLAR_KWH * slot_kwh / (MAX_KW * SLOT_H)
        self.capacity = rng.choice((5.0, 10.0, 13.5))
        self.remaining = self.capacity * rng.uniform(40.0, 95.0) / 100
        self.soh = rng.uniform(50.0, 100.0)
        self.health = next((code for below, code in HEALTH_BELOW if self.soh < below), 0)
        self.solar = random.Random("%s/solar/%d" % (seed, device_id))  # same sun for every N

    def soc_pct(self):
        return 100.0 * self.remaining / self.capacity

    def offer(self, slot, signal):
        """The slot's Offer (None: nothing to sell); self.cost is then what the owner's
        energy is worth to them: the reserve without the market's signal, which only
        raises the ask towards the going price."""
        rules = firmware("reserve")
        reserve = rules.reserve_price(self.floor, self.soc_pct(), self.health, signal)
        self.cost = rules.reserve_price(self.floor, self.soc_pct(), self.health)
        kwh = round(min(rules.offer_kwh(self.remaining, self.capacity, MIN_SOC, 100.0),
                        self.slot_kwh), 4)  # fmt: skip
        if reserve is None or kwh <= 0:
            return None
        return strategies.Offer(self.device_id, kwh, reserve, slot, signal)

    def deliver(self, kwh, recharge=False):
        self.remaining = max(0.0, self.remaining - kwh)
        if recharge:
            self.remaining = min(self.capacity, self.remaining + self.solar.uniform(0, self.sun))
        return kwh


class Tally:
    """One run's sums -> its figures: prices are weighted by kWh sold, money in cents."""

    def __init__(self):
        self.offers = self.offered = self.reserve_c = 0.0
        self.sold = self.revenue = self.owners = self.buyers = 0.0
        self.theory_kwh = self.theory_c = self.bidders = 0.0

    def add(self, offers, traded, costs=None):
        """costs: {device: c/kWh the energy is worth to its owner} (default: the reserve);
        owners' surplus is measured from it."""
        reserve = {o.device_id: o.reserve for o in offers}
        cost = costs or reserve
        self.offers += len(offers)
        self.offered += sum(o.kwh for o in offers)
        self.reserve_c += sum(o.kwh * o.reserve for o in offers)
        self.bidders += traded.bidders * len(offers)
        self.buyers += traded.buyers_c
        for device, kwh, price, theory in traded.sold:
            self.sold += kwh
            self.revenue += price * kwh
            self.owners += (price - cost[device]) * kwh
            if theory is not None:
                self.theory_kwh += kwh
                self.theory_c += theory * kwh

    def figures(self):
        sold = self.sold
        return {
            "mean_price": self.revenue / sold if sold else None,
            "kwh_offered": self.offered, "kwh_sold": sold,
            "sold_share": sold / self.offered if self.offered else 0.0,
            "revenue_c": self.revenue, "owners_surplus_c": self.owners,
            "aggregators_surplus_c": self.buyers, "welfare_c": self.owners + self.buyers,
            "mean_reserve": self.reserve_c / self.offered if self.offered else None,
            "theory_price": self.theory_c / self.theory_kwh if self.theory_kwh else None,
            "mean_bidders": self.bidders / self.offers if self.offers else 0.0,
        }  # fmt: skip
