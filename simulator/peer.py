"""A minimal aggregator's side of ETP: finds batteries on the (loopback) multicast
group and bids over TCP sessions. The demo, tests and benchmarks drive devices with it."""

import asyncio
import collections
import time

from protocol import errors, frame, message, message_info
from transport.discovery import group_socket
from transport.links import now_ms


class GroupListener(asyncio.DatagramProtocol):
    def __init__(self, codec):
        self.codec = codec
        self.inbox = asyncio.Queue()

    def datagram_received(self, data, addr):
        try:
            self.inbox.put_nowait((self.codec.open(data, now_ms()), addr[0]))
        except errors.ETPError:  # a test peer ignores what it cannot read
            pass


class Aggregator:
    """keyring: its pair keys with batteries (pairing.DerivedKeyring of its master secret)
    and the group key."""

    def __init__(self, key_id, keyring, group_addr, group_port):
        self.key_id = key_id
        self.keyring = keyring
        self.codec = frame.Codec(self.keyring, key_id=key_id)
        self.ids = message.MessageIds(now_ms())
        self.group = (group_addr, group_port)
        self.listener = None
        self.links = {}  # device address -> Link

    async def join(self):
        """Listen on the group (through the loopback interface) and be able to send to it."""
        sock = group_socket(*self.group)
        loop = asyncio.get_running_loop()
        _transport, self.listener = await loop.create_datagram_endpoint(
            lambda: GroupListener(self.codec), sock=sock
        )
        self._sender = sock

    def query_group(self, price_signal=0.0):
        msg = message.query(self.ids.next(), 0, 0.0, price_signal)
        self._sender.sendto(self.codec.seal(msg, now_ms(), group=True), self.group)
        return msg

    async def discover(self, count, timeout=10.0):
        """Query the group until `count` batteries answered: {device_id: address}."""
        found = {}
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            self.query_group()
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                try:
                    got, addr = await asyncio.wait_for(self.listener.inbox.get(), 0.1)
                except asyncio.TimeoutError:
                    continue
                if got.message.message_type == message.QUERY_RESPONSE:
                    found[got.message.device_id] = addr
        return found

    async def connect(self, address, port, device_id):
        """A session with the battery device_id at address: every frame names it (a battery
        refuses a frame addressed to another one)."""
        reader, writer = await asyncio.open_connection(address, port)
        link = Link(self, reader, writer, device_id)
        self.links[address] = link
        return link

    async def close(self):
        for link in self.links.values():
            link.writer.close()


class Link:
    """One TCP session with one battery: every frame received goes to the inbox."""

    def __init__(self, agg, reader, writer, device_id):
        self.agg, self.device_id = agg, device_id
        self.reader, self.writer = reader, writer
        self.decoder = frame.StreamDecoder(agg.codec)
        self.inbox = asyncio.Queue()
        self.sent = collections.deque(maxlen=64)  # the frames as sent (for replay tests)
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        while True:
            data = await self.reader.read(4096)
            if not data:
                await self.inbox.put(None)
                return
            self.decoder.feed(data)
            received = now_ms()
            for got in self.decoder.frames(received):
                await self.inbox.put((got, received))

    async def send(self, msg, reply_to=0):
        data = self.agg.codec.seal(msg, now_ms(), reply_to, to=self.device_id)
        self.sent.append(data)
        self.writer.write(data)
        await self.writer.drain()
        return msg

    async def expect(self, *kinds, timeout=5.0):
        """The next frame of one of these types (others are skipped): (Frame, received_ms)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    "no %s within %.1f s" % ([message_info.type_name(k) for k in kinds], timeout)
                )
            item = await asyncio.wait_for(self.inbox.get(), left)
            if item is None:
                raise ConnectionError("the battery closed the session")
            if item[0].message.message_type in kinds:
                return item

    async def query(self, price_signal=0.0):
        """The battery's QueryResponse to a Query (carrying the market's price signal)."""
        sent = await self.send(
            message.query(self.agg.ids.next(), self.device_id, 0.0, price_signal)
        )
        while True:
            got, _at = await self.expect(message.QUERY_RESPONSE)
            if got.reply_to == sent.message_id:
                return got.message

    async def bid(self, device_id, price, kwh):
        return await self.send(message.bid(self.agg.ids.next(), device_id, price, kwh))

    async def answer(self, bid, timeout=5.0):
        """The battery's BID_ACCEPT or BID_REJECT for this bid: (Frame, received_ms)."""
        while True:
            got, at = await self.expect(message.BID_ACCEPT, message.BID_REJECT, timeout=timeout)
            if got.reply_to == bid.message_id:
                return got, at

    async def confirm(self, accept, kw):
        msg = message.bid_confirm(
            self.agg.ids.next(), accept.message.device_id, accept.message.sale_price,
            accept.message.required_energy_amount, kw,
        )  # fmt: skip
        return await self.send(msg, reply_to=accept.message.message_id)
