"""`gridbid demo`: competing aggregators buy batteries' energy over authenticated ETP.

Everything runs here, on 127.0.0.x, with embedded defaults: N batteries (the
firmware on the MicroPython VM, each with a simulated meter, BMS and inverter
over Modbus) and M aggregators (CPython). The aggregators find the batteries on
the multicast group; each round every aggregator asks every battery for its
offer and reserve price and bids; each battery runs its sealed-bid auction,
accepts the best bid at or above its reserve and rejects the rest; winners
confirm, and battery and buyer derive the same contract id. Keys are made for
the run and never shown.

Strategy: aggregator i values a battery's energy at v_i (uniform between the
reserve r and r + 6 c/kWh) and bids r + (v_i - r)(n - 1)/n, the equilibrium bid
of a first-price auction with n bidders and uniform values. With one buyer
(n = 1, the single-utility model) the bid is the reserve itself, so the
improvement printed at the end is what competition adds.
"""

import asyncio
import random
import statistics
import sys
import tempfile
import time

from hub.fleet import Fleet
from protocol import contract, message

SHOWN = ("accepted", "contract ", "auction closed", "DEVICE FAILURE", "CONFIG ERROR", "Traceback")


def add_arguments(parser):
    parser.add_argument("--devices", type=int, default=5, help="batteries (default 5)")
    parser.add_argument("--aggregators", type=int, default=3, help="competing buyers (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="auctions per battery (default 3)")
    parser.add_argument("--reserve", type=float, default=14.0, help="batteries' floor, c/kWh")
    parser.add_argument("--auction-ms", type=int, default=300, help="bid window after first bid")
    parser.add_argument("--seed", type=int, default=None, help="seed for values and batteries")


def run(args):
    for name, low, high in (("devices", 1, 20), ("aggregators", 1, 8), ("rounds", 1, 1000)):
        if not low <= getattr(args, name) <= high:
            print("error: --%s must be %d..%d" % (name, low, high), file=sys.stderr)
            return 2
    return asyncio.run(Demo(args).main())


def say(who, text):
    print("%-9s| %s" % (who, text), flush=True)


class Demo:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.results = []  # (battery, aggregator or None, price, reserve)
        self.latencies = []  # ms from an auction's close to its answers' arrival
        self.contracts = {"aggregators": set(), "batteries": set()}

    async def main(self):
        args = self.args
        with tempfile.TemporaryDirectory(prefix="gridbid-demo-") as tmp:
            fleet = Fleet(
                tmp, aggregators=range(1, args.aggregators + 1), reserve_floor=args.reserve,
                auction_ms=args.auction_ms, slot_s=60,
            )  # fmt: skip
            echo = None
            try:
                for _ in range(args.devices):
                    soc = self.rng.uniform(55.0, 95.0)
                    await fleet.add(sim_settings={"soc_pct": soc})
                say("demo", "starting %d batteries, each with a simulated meter, BMS and inverter"
                    % args.devices)  # fmt: skip
                await asyncio.gather(*(d.start() for d in fleet.devices))
                for device in fleet.devices:
                    say(
                        "bat %d" % device.device_id,
                        "ready on %s (%s)" % (device.address, device.runtime),
                    )
                echo = asyncio.create_task(self.echo(fleet))
                await self.trade(fleet)
                await asyncio.sleep(0.5)  # the batteries' last lines
            finally:
                if echo is not None:
                    echo.cancel()
                await fleet.close()
        self.summary()
        return 0

    async def echo(self, fleet):
        seen = {d.device_id: 0 for d in fleet.devices}
        while True:
            for device in fleet.devices:
                for line in device.lines[seen[device.device_id] :]:
                    if any(word in line for word in SHOWN):
                        say("bat %d" % device.device_id, line)
                    if line.startswith("contract ") and " with aggregator " in line:
                        self.contracts["batteries"].add(line.split()[1])
                seen[device.device_id] = len(device.lines)
            await asyncio.sleep(0.05)

    async def trade(self, fleet):
        aggs = [await fleet.aggregator(key_id) for key_id in range(1, self.args.aggregators + 1)]
        found = await aggs[0].discover(len(fleet.devices))
        say("agg 1", "found %d batteries on the multicast group" % len(found))
        links = {}
        for agg in aggs:
            for device in fleet.devices:
                links[agg.key_id, device.device_id] = await agg.connect(
                    device.address, fleet.tcp_port
                )
        for number in range(1, self.args.rounds + 1):
            say("demo", "--- round %d: %d aggregators bid on %d batteries ---"
                % (number, len(aggs), len(fleet.devices)))  # fmt: skip
            await asyncio.gather(*(self.auction(d, aggs, links) for d in fleet.devices))
            await asyncio.sleep(0.3)  # the batteries' lines of this round print before the next

    async def auction(self, device, aggs, links):
        n = len(aggs)
        offers = await asyncio.gather(*(links[a.key_id, device.device_id].query() for a in aggs))
        reserve = offers[0].sale_price
        if offers[0].energy_total <= 0:
            say("bat %d" % device.device_id, "has nothing to sell")
            return
        bids = []
        for agg, offer in zip(aggs, offers):
            value = offer.sale_price + self.rng.uniform(0.0, 6.0)
            bid = offer.sale_price + (value - offer.sale_price) * (n - 1) / n
            price = max(offer.sale_price, round(bid, 2))  # cents, never below the reserve
            link = links[agg.key_id, device.device_id]
            bids.append((agg, link, await link.bid(device.device_id, price, offer.energy_total)))
        closes = int(time.time() * 1000) + self.args.auction_ms
        winner = None
        for agg, link, bid in bids:
            answer, received = await link.answer(bid)
            self.latencies.append(received - closes)
            if answer.message.message_type == message.BID_ACCEPT:
                winner = (agg, bid.bid_price)
                await link.confirm(answer, kw=5.0)
                deal = contract.contract_id(device.device_id, agg.key_id, bid.message_id)
                self.contracts["aggregators"].add(deal)
                say("agg %d" % agg.key_id, "won battery %d at %.2f c/kWh (reserve %.2f)"
                    % (device.device_id, bid.bid_price, reserve))  # fmt: skip
        self.results.append((device.device_id, winner, reserve))

    def summary(self):
        sold = [(w[1], r) for _d, w, r in self.results if w]
        say("demo", "--- %d auctions, %d sold ---" % (len(self.results), len(sold)))
        if sold:
            paid = statistics.mean(p for p, _r in sold)
            reserve = statistics.mean(r for _p, r in sold)
            say("demo", "a single utility pays the reserve:  %.2f c/kWh on average" % reserve)
            say("demo", "with %d aggregator(s) bidding:       %.2f c/kWh on average (%+.1f%%)"
                % (self.args.aggregators, paid, 100 * (paid - reserve) / reserve))  # fmt: skip
        ours, theirs = self.contracts["aggregators"], self.contracts["batteries"]
        if ours == theirs:
            say("demo", "batteries and aggregators derived the same %d contract ids" % len(ours))
        else:
            say("demo", "MISMATCH: only the aggregators have %s; only the batteries %s"
                % (sorted(ours - theirs), sorted(theirs - ours)))  # fmt: skip
        if self.latencies:
            say("demo", "answers after an auction closed: median %d ms, max %d ms (deadline 500)"
                % (statistics.median(self.latencies), max(self.latencies)))  # fmt: skip
