"""Finding batteries on the ETP multicast group (the market maker's side).

Discovery: a Query goes to the group every query_s and again every retry_ms
until every battery we know has answered since (group datagrams carry no acks,
and some get lost); Registers and QueryResponses keep the Registry current.
Batteries send the market maker what it acts on sealed with their pair key with it
(a codec with a DerivedKeyring): their Registers, QueryResponses and DeviceFailures
(also on the group, for other members), receipts and status; the group's copies prove
membership only, and nothing of them is taken.
`loss` drops that share of datagrams both ways, for tests: it stands in for
netem, which the test machines' kernel lacks.
"""

import asyncio
import logging
import random
import socket
import time

from protocol import errors, message
from transport import tasks
from transport.counts import Counts
from transport.links import now_ms

log = logging.getLogger(__name__)
# Why a datagram on the group was not taken: the decoder's error class -> a reason
# (a fixed set: /metrics label values); "impersonation": a frame about another device.
REFUSED = {
    errors.BadLength: "length", errors.BadHeader: "header", errors.UnknownType: "type",
    errors.BadValue: "value", errors.UnknownKey: "unknown_key", errors.BadTag: "tag",
    errors.Replay: "replay", errors.Expired: "expired", errors.ContractError: "contract",
}  # fmt: skip


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
                 loss=0.0, seed=None, on_frame=None):  # fmt: skip
        self.codec = codec
        self.on_frame = on_frame  # on_frame(frame, address) for every authentic frame
        self.registry = registry
        self.group = (group_addr, group_port)
        self.interface = interface
        self.loss = loss
        self.rng = random.Random(seed)
        self.answered = {}  # device id -> ms of its last answer
        self.dropped = 0
        # For the hub's /metrics: datagrams in, Queries out, and those refused, by reason.
        self.frames_in = self.frames_out = 0
        self.refused = Counts((*REFUSED.values(), "impersonation"))
        self._sock = None

    async def start(self):
        sock = group_socket(*self.group, self.interface)
        loop = asyncio.get_running_loop()
        self._endpoint, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._sock = sock

    def close(self):
        """Leave the group: the socket is closed (a restarted hub in the same process
        would otherwise find the port still joined)."""
        if self._sock is not None:
            self._endpoint.close()
            self._sock = None

    def _lost(self):
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return True
        return False

    def datagram_received(self, data, addr):
        if self._lost():
            return
        self.frames_in += 1
        try:
            got = self.codec.open(data, now_ms())
        except errors.ETPError as exc:
            self.refused.add(REFUSED.get(type(exc)))
            return
        kind = got.message.message_type
        if got.message.device_id != got.key_id:
            self.refused.add("impersonation")
            return  # a battery speaks for itself (its key id is its device id)
        # A group frame proves membership only (any member can name any sender): what a
        # battery offers, where it is and its failures count only sealed for us.
        if got.group:
            return
        if kind in (message.REGISTER, message.QUERY_RESPONSE, message.DEVICE_FAILURE):
            self.registry.seen(got.message.device_id, addr[0], got.message, got.sent_ms)
            if kind == message.QUERY_RESPONSE:
                self.answered[got.message.device_id] = now_ms()
        if self.on_frame is not None:
            try:
                self.on_frame(got, addr[0])
            except Exception as exc:  # a frame the hub cannot take: one line, never silence
                log.error("frame from battery %d not handled: %s", got.message.device_id,
                          tasks.describe(exc))  # fmt: skip
                log.debug("frame not handled", exc_info=exc)

    def query(self, ids, price_signal=0.0):
        msg = message.query(ids.next(), 0, 0.0, price_signal)
        if not self._lost():
            self._sock.sendto(self.codec.seal(msg, now_ms(), group=True), self.group)
            self.frames_out += 1

    async def find(self, ids, count, timeout_s=10.0, retry_ms=250, price_signal=0.0):
        """Query until `count` batteries answered after this call; -> their ids."""
        since = now_ms()
        deadline = time.monotonic() + timeout_s
        while True:
            fresh = [d for d, at in self.answered.items() if at >= since]
            if len(fresh) >= count or time.monotonic() >= deadline:
                return fresh
            self.query(ids, price_signal)
            await asyncio.sleep(retry_ms / 1000)
