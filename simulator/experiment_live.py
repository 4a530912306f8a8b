"""`gridbid experiment --live`: the same experiment with real batteries — the
firmware on the MicroPython VM (simulator/fleet.py), each with a simulated meter, BMS
and inverter — and the aggregators querying, bidding and confirming over ETP on
loopback. Small by design (the experiment caps devices, slots and aggregators)."""

import asyncio
import random

from aggregator import strategies
from simulator.model import FLOOR, MAX_KW, MIN_SOC, SLOT_H, Battery, Tally, price_signal


def live_simulate(buyers, theory, devices, slots, seed, floor=FLOOR, progress=None):
    """As simulate, but each battery is the firmware (simulator/fleet.py) with a simulated
    meter, BMS and inverter, and the aggregators query, bid and confirm over ETP. SoC
    moves only as contracts run; delivery is not awaited, so reputations stay."""
    return asyncio.run(_live(buyers, theory, devices, slots, seed, floor, progress))


async def _live(buyers, theory, devices, slots, seed, floor, progress):
    import tempfile

    from simulator.fleet import Fleet

    tally, market, keys = Tally(slots), random.Random("%s/market" % seed), range(1, len(buyers) + 1)
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
                auctions = [_live_auction(d.device_id, buyers, links, slot, signal, market)
                            for d in fleet.devices]  # fmt: skip
                for offer, sales, bidders in await asyncio.gather(*auctions):
                    if offer is not None:
                        tally.add(slot, offer, sales, theory, bidders)
                if progress:
                    progress((slot + 1) / slots)
            runtime = fleet.devices[0].runtime
        finally:
            await fleet.close()
    return {**tally.stats(), "runtime": runtime}


async def _live_auction(device_id, buyers, links, slot, signal, market):
    from protocol import message

    replies = await asyncio.gather(*(links[b.name, device_id].query(signal) for b in buyers))
    if replies[0].energy_total <= 0:
        return None, [], 0
    offer = strategies.Offer(
        device_id, replies[0].energy_total, replies[0].sale_price, slot, signal
    )
    sent = []
    for buyer in market.sample(buyers, len(buyers)):
        bid = buyer.bid(offer)
        if bid is not None:
            link = links[buyer.name, device_id]
            sent.append((buyer, link, await link.bid(device_id, bid.price, bid.kwh)))
    sold = {}  # buyer name -> (kWh, price) of each accepted bid
    for buyer, link, msg in sent:
        got, _at = await link.answer(msg)
        if got.message.message_type == message.BID_ACCEPT:
            sold[buyer.name] = (got.message.required_energy_amount, got.message.sale_price)
            await link.confirm(got, kw=MAX_KW)
    top = max((price for _kwh, price in sold.values()), default=None)
    bids = {buyer.name: msg.bid_price for buyer, _link, msg in sent}
    for buyer in buyers:
        kwh, _price = sold.get(buyer.name, (0.0, None))
        buyer.observe(strategies.Outcome(
            device_id, slot, kwh > 0, bids.get(buyer.name), kwh, top))  # fmt: skip
    return offer, list(sold.values()), len(sent)
