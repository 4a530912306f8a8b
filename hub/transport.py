"""The hub's side of ETP: finding batteries on the multicast group, and one TCP
link per (aggregator, battery).

Discovery: a Query goes to the group every query_s and again every retry_ms
until every battery we know has answered since (group datagrams carry no acks,
and some get lost); Registers and QueryResponses keep the Registry current.
`loss` drops that share of datagrams both ways, for tests: it stands in for
netem, which the test machines' kernel lacks.

DeviceLink: an aggregator's TCP session with one battery. It reconnects with
backoff (0.5 s, doubling to 30 s). Outgoing frames wait in a bounded priority
queue, most urgent ETP priority first (message.TIMING), first in first out
within a priority, and are sealed when they leave, so sent_ms is the real send
time; a full queue refuses a frame (QueueFull) rather than grow. Every frame
received goes to the link's handler.
"""

import asyncio
import itertools
import random
import socket
import time

from protocol import errors, frame, message

BACKOFF_S = (0.5, 30.0)
READ_SIZE = 4096


def now_ms():
    return time.time_ns() // 1_000_000


def group_socket(group_addr, port, interface="127.0.0.1"):
    """A UDP socket joined to the ETP group through `interface`, sending through it too
    (several processes on one host may bind the group port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    via = socket.inet_aton(interface)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group_addr) + via)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, via)
    return sock


class QueueFull(Exception):
    """A link's outgoing queue is full: the battery is not reading, or is gone."""


class DeviceInfo:
    """What the hub knows of one battery."""

    def __init__(self, device_id, address):
        self.device_id = device_id
        self.address = address
        self.last_seen_ms = 0
        self.capacity_kwh = self.remaining_kwh = self.voltage = self.max_kw = 0.0
        self.health = message.HEALTH_GOOD
        self.offer_kwh = self.reserve = 0.0
        self.failures = 0
        self.promised_wh = self.delivered_wh = 0.0

    @property
    def reputation(self):
        """Energy delivered / promised over its contracts (1.0 until it has a record)."""
        return self.delivered_wh / self.promised_wh if self.promised_wh else 1.0


class Registry:
    def __init__(self):
        self.devices = {}

    def seen(self, device_id, address, msg, at_ms):
        info = self.devices.get(device_id)
        if info is None:
            info = self.devices[device_id] = DeviceInfo(device_id, address)
        info.address, info.last_seen_ms = address, at_ms
        kind = msg.message_type
        if kind in (message.REGISTER, message.BESS_STATUS):
            info.capacity_kwh = msg.energy_total
            info.remaining_kwh = msg.remaining_battery_energy
        if kind in (message.REGISTER, message.QUERY_RESPONSE):
            info.max_kw = msg.discharge_rate
        if kind == message.QUERY_RESPONSE:
            info.offer_kwh, info.reserve = msg.energy_total, msg.sale_price
            info.remaining_kwh = msg.remaining_battery_energy
        if kind == message.DEVICE_FAILURE:
            info.failures += 1
        info.health = msg.battery_health_status_code
        if msg.battery_voltage:
            info.voltage = msg.battery_voltage
        return info


class Discovery(asyncio.DatagramProtocol):
    def __init__(self, codec, registry, group_addr, group_port, interface="127.0.0.1",
                 loss=0.0, seed=None):  # fmt: skip
        self.codec = codec
        self.registry = registry
        self.group = (group_addr, group_port)
        self.interface = interface
        self.loss = loss
        self.rng = random.Random(seed)
        self.answered = {}  # device id -> ms of its last answer
        self.dropped = 0
        self._sock = None

    async def start(self):
        sock = group_socket(*self.group, self.interface)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._sock = sock

    def _lost(self):
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return True
        return False

    def datagram_received(self, data, addr):
        if self._lost():
            return
        try:
            got = self.codec.open(data, now_ms())
        except errors.ETPError:
            return
        kind = got.message.message_type
        if kind in (message.REGISTER, message.QUERY_RESPONSE, message.DEVICE_FAILURE):
            self.registry.seen(got.message.device_id, addr[0], got.message, got.sent_ms)
            if kind == message.QUERY_RESPONSE:
                self.answered[got.message.device_id] = now_ms()

    def query(self, ids, price_signal=0.0):
        msg = message.query(ids.next(), 0, 0.0, price_signal)
        if not self._lost():
            self._sock.sendto(self.codec.seal(msg, now_ms(), group=True), self.group)

    async def find(self, ids, count, timeout_s=10.0, retry_ms=250, price_signal=0.0):
        """Query until `count` batteries answered after this call; -> their ids."""
        since = now_ms()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fresh = [d for d, at in self.answered.items() if at >= since]
            if len(fresh) >= count:
                return fresh
            self.query(ids, price_signal)
            await asyncio.sleep(retry_ms / 1000)
        return [d for d, at in self.answered.items() if at >= since]


class DeviceLink:
    """One aggregator's TCP session with one battery, kept up."""

    def __init__(self, codec, address, port, handler, queue_size=64, on_connect=None):
        self.codec = codec
        self.address, self.port = address, port
        self.handler = handler  # called as handler(link, frame) for every frame received
        # Called on every (re)connection: a battery closes a session that does not
        # authenticate soon, so the aggregator says something (e.g. a Query) at once.
        self.on_connect = on_connect
        self.queue = asyncio.PriorityQueue(queue_size)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._order = itertools.count()
        self._task = None

    def send(self, msg, reply_to=0):
        """Queue a frame by ETP priority; raises QueueFull rather than grow."""
        try:
            self.queue.put_nowait(
                (message.priority(msg.message_type), next(self._order), msg, reply_to)
            )
        except asyncio.QueueFull:
            raise QueueFull(
                "link to %s: %d frames waiting" % (self.address, self.queue.qsize())
            ) from None

    def start(self):
        self._task = asyncio.create_task(self._run())
        return self

    async def close(self):
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self):
        delay = BACKOFF_S[0]
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.address, self.port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            delay = BACKOFF_S[0]
            self.connected.set()
            if self.on_connect is not None:
                self.on_connect(self)
            sender = asyncio.create_task(self._send_loop(writer))
            try:
                await self._read_loop(reader)
            except OSError:
                pass
            finally:
                self.connected.clear()
                sender.cancel()
                writer.close()
                self.reconnects += 1

    async def _send_loop(self, writer):
        while True:
            _priority, _n, msg, reply_to = await self.queue.get()
            writer.write(self.codec.seal(msg, now_ms(), reply_to=reply_to))
            await writer.drain()

    async def _read_loop(self, reader):
        decoder = frame.StreamDecoder(self.codec)
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            decoder.feed(data)
            for got in decoder.frames(now_ms()):
                self.handler(self, got)
