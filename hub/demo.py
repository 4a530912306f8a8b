"""`gridbid demo`: competing aggregators buy a battery's energy over authenticated ETP.

A battery (firmware/demo_device.py) runs on the MicroPython VM; N aggregators
run here on CPython and talk to it over TCP on 127.0.0.1. Each round every
aggregator queries the battery, learns its reserve price, and bids; the battery
accepts the best bid and rejects the rest; the winner confirms and both sides
derive the same contract id. Keys are generated for the run and never shown.

Strategy: aggregator i values the energy at v_i (drawn uniformly between the
reserve r and r + 6 c/kWh) and bids r + (v_i - r)(n - 1)/n, the equilibrium
bid of a first-price auction with n bidders and uniform values. With one
buyer (n = 1, the single-utility model) that bid is the reserve itself, so the
price improvement printed at the end is what competition adds.
"""

import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hub import micropython
from protocol import auth, contract, frame, message

DEVICE_ID = 1001
SLOT_S, GATE_S = 60, 10


def add_arguments(parser):
    parser.add_argument("--aggregators", type=int, default=3, help="competing buyers (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="auctions to run (default 3)")
    parser.add_argument("--reserve", type=float, default=14.0, help="battery reserve, c/kWh")
    parser.add_argument("--auction-ms", type=int, default=300, help="bid window after first bid")
    parser.add_argument("--seed", type=int, default=None, help="seed for the aggregators' values")


def run(args):
    if not 1 <= args.aggregators <= 8:
        print("error: --aggregators must be 1..8 (a board takes ~8 connections)", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    return asyncio.run(Demo(args).main())


def now_ms():
    return time.time_ns() // 1_000_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(who, text):
    print("%-9s| %s" % (who, text), flush=True)


class Aggregator:
    """One buyer with its own key id, key and connection to the battery."""

    def __init__(self, key_id, keyring, reader, writer, seed):
        self.key_id = key_id
        self.rng = random.Random(None if seed is None else "%s-%d" % (seed, key_id))
        self.name = "agg %d" % key_id
        self.codec = frame.Codec(keyring, key_id=key_id)
        self.ids = message.MessageIds(now_ms())
        self.decoder = frame.StreamDecoder(self.codec)
        self.reader, self.writer = reader, writer

    async def send(self, msg, reply_to=0):
        self.writer.write(self.codec.seal(msg, now_ms(), reply_to=reply_to))
        await self.writer.drain()

    def dropped(self, exc):
        say(self.name, "dropped a frame: %s: %s" % (type(exc).__name__, exc))

    async def receive(self, timeout=5.0):
        while True:
            for got in self.decoder.frames(now_ms(), self.dropped):
                return got  # the rest stays buffered for the next call
            data = await asyncio.wait_for(self.reader.read(4096), timeout)
            if not data:
                raise ConnectionError("the battery closed the connection")
            self.decoder.feed(data)


class Demo:
    def __init__(self, args):
        self.args = args
        self.results = []  # (round, (winner, price, reserve) or None)
        self.contracts = {"aggregators": set(), "battery": set()}
        self.latencies = []  # ms from the auction's close to the decision's arrival
        self.frames = 0

    async def main(self):
        with tempfile.TemporaryDirectory(prefix="gridbid-demo-") as tmp:
            keys = {str(DEVICE_ID): os.urandom(32).hex()}
            for agg in range(1, self.args.aggregators + 1):
                keys[str(agg)] = os.urandom(32).hex()
            keyfile = {"keys": keys, "group": os.urandom(32).hex()}
            port = free_port()
            config = Path(tmp) / "device.json"
            config.touch(mode=0o600)
            config.write_text(json.dumps({
                **keyfile, "device_id": DEVICE_ID, "key_id": DEVICE_ID, "port": port,
                "reserve": self.args.reserve, "offer_kwh": 0.08, "auction_ms": self.args.auction_ms,
            }))  # fmt: skip
            argv, env, runtime = micropython.command(micropython.ROOT / "firmware/demo_device.py",
                                                     str(config))  # fmt: skip
            if runtime != "MicroPython":
                say("demo", "no MicroPython VM for this CPU: the battery runs on CPython")
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop it.
            device = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                await self.wait_listening(device, runtime)
                echo = asyncio.create_task(self.echo(device))
                await self.trade(auth.Keyring.from_json(keyfile), port)
                await asyncio.sleep(0.3)  # let the battery print its last lines
                echo.cancel()
            finally:
                if device.returncode is None:
                    device.terminate()
                    await device.wait()
        self.summary()
        return 0

    async def wait_listening(self, device, runtime):
        try:
            line = await asyncio.wait_for(device.stdout.readline(), 15)
        except asyncio.TimeoutError:
            line = b""
        if b"listening" not in line:
            rest = line + await device.stdout.read()
            raise SystemExit("the battery did not start on %s:\n%s" % (runtime, rest.decode()))
        say("battery", "%s  (on %s)" % (line.decode().strip(), runtime))

    async def echo(self, device):
        async for line in device.stdout:
            text = line.decode().rstrip()
            say("battery", text)
            if ": contract " in text:
                self.contracts["battery"].add(text.rsplit(" ", 1)[1])

    async def trade(self, keyring, port):
        aggs = []
        for key_id in range(1, self.args.aggregators + 1):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            aggs.append(Aggregator(key_id, keyring, reader, writer, self.args.seed))
        for number in range(1, self.args.rounds + 1):
            say("demo", "--- round %d: %d aggregators compete ---" % (number, len(aggs)))
            outcomes = await asyncio.gather(*(self.bid_round(agg, len(aggs)) for agg in aggs))
            winners = [o for o in outcomes if o is not None]
            self.results.append((number, winners[0] if winners else None))
        for agg in aggs:
            await agg.send(message.terminate(agg.ids.next(), DEVICE_ID))
            self.frames += 1
            agg.writer.close()

    async def bid_round(self, agg, n):
        await agg.send(message.query(agg.ids.next(), DEVICE_ID, 0.08))
        offer = (await agg.receive()).message
        reserve = offer.sale_price
        value = reserve + agg.rng.uniform(0.0, 6.0)
        price = round(reserve + (value - reserve) * (n - 1) / n, 2)
        bid = message.bid(agg.ids.next(), DEVICE_ID, price, offer.energy_total)
        await agg.send(bid)
        sent = now_ms()
        say(agg.name, "values it at %.2f, bids %.2f c/kWh" % (value, price))
        answer = await agg.receive()
        self.frames += 4
        self.latencies.append(now_ms() - sent - self.args.auction_ms)
        if answer.reply_to != bid.message_id:
            raise RuntimeError("%s got an answer to another bid" % agg.name)
        if answer.message.message_type != message.BID_ACCEPT:
            say(agg.name, "lost (rejected at %.2f)" % price)
            return None
        start = (now_ms() // 1000 // SLOT_S + 1) * SLOT_S
        deal = contract.MarketContract.create(
            contract.BUYER, contract.contract_id(DEVICE_ID, agg.key_id, bid.message_id),
            contract.slot_name(SLOT_S, GATE_S, "demo", start), start, 1,
            round(offer.energy_total * 1000 * 3600 / SLOT_S),
        )  # fmt: skip
        confirm = message.bid_confirm(
            agg.ids.next(), DEVICE_ID, price, offer.energy_total, deal.avg_power_watts / 1000
        )
        await agg.send(confirm, reply_to=answer.message.message_id)
        self.frames += 1
        say(agg.name, "won at %.2f c/kWh: contract %s" % (price, deal.contract_id))
        self.contracts["aggregators"].add(deal.contract_id)
        return agg.name, price, reserve

    def summary(self):
        prices = [r[1][1] for r in self.results if r[1]]
        reserve = self.args.reserve
        say("demo", "--- %d rounds, %d authenticated frames ---" % (len(self.results), self.frames))
        if prices:
            mean = statistics.mean(prices)
            say("demo", "single utility pays the reserve: %.2f c/kWh" % reserve)
            say("demo", "with %d aggregator(s) bidding:    %.2f c/kWh on average (%+.1f%%)"
                % (self.args.aggregators, mean, 100 * (mean - reserve) / reserve))  # fmt: skip
        ours, theirs = self.contracts["aggregators"], self.contracts["battery"]
        if ours == theirs:
            say("demo", "battery and aggregators derived the same %d contract ids" % len(ours))
        else:
            say("demo", "MISMATCH: contracts only the aggregators have: %s; only the battery: %s"
                % (sorted(ours - theirs), sorted(theirs - ours)))  # fmt: skip
        if self.latencies:
            say("demo", "decision after auction close: median %d ms, max %d ms (deadline 500 ms)"
                % (statistics.median(self.latencies), max(self.latencies)))  # fmt: skip
