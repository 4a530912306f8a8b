"""The battery's reserve price and how much energy it offers.

reserve = floor x soc_factor x health_factor, raised to at least 90 % of the
market's price signal when one is known:

- floor: the owner's configured minimum, c/kWh.
- soc_factor = 1 + 0.5 x (1 - SoC/100): the last kWh in a battery are worth
  more to its owner (backup, and deep cycles wear it), so an empty battery asks
  1.5x the floor and a full one the floor.
- health_factor: 1.0 good, 1.1 degraded, 1.25 poor. Every cycle costs a tired
  battery more of its remaining life. A faulted battery offers nothing.
- price signal: never ask below 90 % of the market's indicative price: under
  that, the owner would be leaving money on the table. Asking above it is fine.

Unknown SoC or health (stale readings) means no offer: the battery does not sell
what it cannot measure.
"""

from protocol import message

SOC_WEIGHT = 0.5
SIGNAL_SHARE = 0.9
HEALTH_FACTOR = {
    message.HEALTH_GOOD: 1.0,
    message.HEALTH_DEGRADED: 1.1,
    message.HEALTH_POOR: 1.25,
}


def reserve_price(floor, soc_pct, health, signal=0.0):
    """c/kWh the battery asks at least, or None when it must not sell."""
    if soc_pct is None or health not in HEALTH_FACTOR:
        return None
    soc = min(max(soc_pct, 0.0), 100.0)
    price = floor * (1.0 + SOC_WEIGHT * (1.0 - soc / 100.0)) * HEALTH_FACTOR[health]
    if signal and signal > 0:
        price = max(price, SIGNAL_SHARE * signal)
    return round(price, 4)


def offer_kwh(remaining_kwh, capacity_kwh, min_soc_pct, sell_pct, committed_kwh=0.0):
    """Stored energy the battery can still sell: what lies above the owner's
    minimum SoC, times the share they sell, less what contracts already hold.
    (How much of it one slot can carry is the executor's free_slot.)"""
    if remaining_kwh is None or capacity_kwh is None:
        return 0.0
    above_min = remaining_kwh - capacity_kwh * min_soc_pct / 100.0
    return round(max(0.0, above_min * sell_pct / 100.0 - committed_kwh), 4)
