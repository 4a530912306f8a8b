"""A minimal ETP battery for the local demo: auctions its energy over TCP.

    micropython firmware/demo_device.py CONFIG.json      (MICROPYPATH = repo root)

It answers Query with its reserve, collects Bids for auction_ms after the
first one, BidAccepts the best bid at or above the reserve and BidRejects the
others, and takes a BidConfirm as the contract. Every frame is authenticated;
everything it does is printed, one line each. The full battery controller
(Modbus, discovery, persistence) is the firmware app; this is its smallest
honest subset, and runs unchanged on MicroPython and CPython.
"""

import asyncio
import json
import sys
import time

from protocol import auth, contract, frame, message


def now_ms():
    return time.time_ns() // 1000000


def dropped(exc):
    log("dropped a frame: %s: %s" % (type(exc).__name__, exc))


def log(text):
    print(text)
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


class DemoBattery:
    def __init__(self, config):
        self.device_id = config["device_id"]
        self.reserve = float(config["reserve"])
        self.offer_kwh = float(config["offer_kwh"])
        self.auction_ms = config.get("auction_ms", 300)
        self.codec = frame.Codec(auth.Keyring.from_json(config), key_id=config["key_id"])
        self.ids = message.MessageIds(now_ms())
        self.bids = []  # [(price, kwh, bid message_id, aggregator id, writer)]
        self.accepted = {}  # our BidAccept message_id -> (aggregator id, bid message_id)
        self.peers = 0

    async def send(self, writer, msg, reply_to=0):
        writer.write(self.codec.seal(msg, now_ms(), reply_to=reply_to))
        await writer.drain()

    async def serve(self, reader, writer):
        self.peers += 1
        decoder = frame.StreamDecoder(self.codec)
        try:
            while True:
                data = await reader.read(512)
                if not data:
                    break
                decoder.feed(data)
                for got in decoder.frames(now_ms(), dropped):
                    if not await self.handle(got, writer):
                        return
        finally:
            self.peers -= 1
            writer.close()

    async def handle(self, got, writer):
        msg, peer = got.message, got.key_id
        kind = msg.message_type
        if kind == message.QUERY:
            log("<- query from aggregator %d" % peer)
            reply = message.query_response(
                self.ids.next(), self.device_id, self.reserve, self.offer_kwh, 100.0,
                self.offer_kwh, message.HEALTH_GOOD, 51.2, 5.0,
            )  # fmt: skip
            await self.send(writer, reply, msg.message_id)
            log("-> offer %.3f kWh, reserve %.2f c/kWh" % (self.offer_kwh, self.reserve))
        elif kind == message.BID:
            log("<- bid %.2f c/kWh from aggregator %d" % (msg.bid_price, peer))
            if not self.bids:
                asyncio.create_task(self.close_auction())
            bid = (msg.bid_price, msg.required_energy_amount, msg.message_id, peer, writer)
            self.bids.append(bid)
        elif kind == message.BID_CONFIRM:
            accepted = self.accepted.get(got.reply_to)
            if accepted is None or accepted[0] != peer:
                log("<- confirm from aggregator %d answers no accept of ours: ignored" % peer)
            else:
                del self.accepted[got.reply_to]
                deal = contract.contract_id(self.device_id, peer, accepted[1])
                log("<- confirm from aggregator %d: contract %s" % (peer, deal))
        elif kind == message.TERMINATE:
            log("<- terminate from aggregator %d" % peer)
            return False
        return True

    async def close_auction(self):
        await asyncio.sleep(self.auction_ms / 1000)
        bids, self.bids = self.bids, []
        bids.sort(key=lambda b: -b[0])
        best = bids[0] if bids[0][0] >= self.reserve else None
        for bid in bids:
            price, kwh, bid_id, peer, writer = bid
            if bid is best:
                accept = message.bid_accept(self.ids.next(), self.device_id, price, price, kwh)
                self.accepted[accept.message_id] = (peer, bid_id)
                await self.send(writer, accept, bid_id)
                log("-> accept %.2f c/kWh from aggregator %d" % (price, peer))
            else:
                reason = message.REJECT_OUTBID if best else message.REJECT_BELOW_RESERVE
                reject = message.bid_reject(
                    self.ids.next(), self.device_id, price, self.reserve, reason
                )
                await self.send(writer, reject, bid_id)
                log("-> reject %.2f c/kWh from aggregator %d" % (price, peer))


async def main(path):
    with open(path) as f:
        config = json.load(f)
    battery = DemoBattery(config)
    await asyncio.start_server(battery.serve, "127.0.0.1", config["port"], backlog=16)
    log("battery %d listening on 127.0.0.1:%d" % (battery.device_id, config["port"]))
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
