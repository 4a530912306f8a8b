"""`gridbid experiment --live`: the bilateral market's N runs with real batteries — the
firmware on the MicroPython VM (simulator/fleet.py), each with a simulated meter, BMS
and inverter — and the aggregators querying, bidding and confirming over ETP on
loopback. Small by design (the experiment caps devices, slots and aggregators); the
baselines stay in process."""

import asyncio
import random

from aggregator import strategies
from simulator.markets import Traded
from simulator.model import FLOOR, MAX_KW, MIN_SOC, SLOT_H, Battery, Tally, price_signal


def run_market_live(market, buyers, devices, slots, seed, floor=FLOOR, tick=None, _slot_kwh=None):
    """As experiment.run_market for a BilateralMarket (its theory), but each battery is
    the firmware with simulated devices, and the aggregators query, bid and confirm
    over ETP. SoC moves only as contracts run; delivery is not awaited, so
    reputations stay."""
    return asyncio.run(_live(market, buyers, devices, slots, seed, floor, tick))


async def _live(market, buyers, devices, slots, seed, floor, tick):
    import tempfile

    from simulator.fleet import Fleet

    tally, rng, keys = Tally(), random.Random("%s/market" % seed), range(1, len(buyers) + 1)
    with tempfile.TemporaryDirectory(prefix="gridbid-experiment-") as tmp:
        fleet = Fleet(
            tmp, aggregators=keys, reserve_floor=floor, min_soc_pct=MIN_SOC, max_kw=MAX_KW,
            max_peers=max(8, len(buyers)), slot_s=int(SLOT_H * 3600), auction_ms=150,
            slots_ahead=slots,  # each experiment slot sells a later real slot
        )  # fmt: skip
        try:
            for i in range(devices):
                b = Battery(1001 + i, seed, floor)
                sim = {"capacity_kwh": b.capacity, "soc_pct": b.soc_pct(), "soh_pct": b.soh}
                await fleet.add(sim_settings=sim)
            await asyncio.gather(*(d.start() for d in fleet.devices))
            aggs = [await fleet.aggregator(key) for key in keys]
            links = {}  # the fleet knows the addresses: discovery is the demo's subject
            for agg, buyer in zip(aggs, buyers):
                for d in fleet.devices:
                    links[buyer.name, d.device_id] = await agg.connect(
                        d.address, fleet.tcp_port, d.device_id
                    )
            for slot in range(slots):
                signal = price_signal(slot)
                auctions = [_auction(d.device_id, buyers, links, slot, signal, rng, market)
                            for d in fleet.devices]  # fmt: skip
                offers, sold, buyers_c, bids = [], [], 0.0, 0
                for offer, sales, surplus, bidders in await asyncio.gather(*auctions):
                    if offer is not None:
                        offers.append(offer)
                        sold += sales
                        buyers_c += surplus
                        bids += bidders
                tally.add(offers, Traded(sold, buyers_c, bids / max(1, len(offers)), signal))
                if tick:
                    tick()
        finally:
            await fleet.close()
    return tally.figures()


async def _auction(device_id, buyers, links, slot, signal, rng, market):
    """One battery's auction over ETP -> (Offer, [(device, kWh, price, theory)],
    buyers' surplus c, bids)."""
    from protocol import message

    replies = await asyncio.gather(*(links[b.name, device_id].query(signal) for b in buyers))
    if replies[0].energy_total <= 0:
        return None, [], 0.0, 0
    offer = strategies.Offer(
        device_id, replies[0].energy_total, replies[0].sale_price, slot, signal
    )
    sent = []
    for buyer in rng.sample(buyers, len(buyers)):
        bid = buyer.bid(offer)
        if bid is not None:
            link = links[buyer.name, device_id]
            sent.append((buyer, bid, link, await link.bid(device_id, bid.price, bid.kwh)))
    sold, theory = {}, market.theory(offer.reserve, len(sent)) if market.theory else None
    surplus = 0.0
    for buyer, bid, link, msg in sent:
        got, _at = await link.answer(msg)
        if got.message.message_type == message.BID_ACCEPT:
            kwh, price = got.message.required_energy_amount, got.message.sale_price
            sold[buyer.name] = (kwh, price)
            if bid.worth is not None:
                surplus += (bid.worth - price) * kwh
            await link.confirm(got, kw=MAX_KW)
    top = max((price for _kwh, price in sold.values()), default=None)
    bids = {buyer.name: msg.bid_price for buyer, _bid, _link, msg in sent}
    for buyer in buyers:
        kwh, _price = sold.get(buyer.name, (0.0, None))
        buyer.observe(strategies.Outcome(
            device_id, slot, kwh > 0, bids.get(buyer.name), kwh, top))  # fmt: skip
    sales = [(device_id, kwh, price, theory) for kwh, price in sold.values()]
    return offer, sales, surplus, len(sent)
