"""Lightweight simulated batteries for bench/hub_load.py: one process, many devices.

Each device is an asyncio TCP server on its own loopback address that speaks
authenticated ETP like the firmware (firmware/node.py), without Modbus or storage:

- a session's first authentic frame names its aggregator; a session that does not
  authenticate within auth_ms is closed; at most max_peers sessions per device;
- Query -> QueryResponse (reply_to = the query), offer and reserve from the
  firmware's own reserve.py;
- Bids go into the firmware's own sealed-bid Auction (firmware/auction.py); it
  closes auction_ms after the first bid (a timer at the close, where the firmware
  polls every 10 ms), then BidAccept to the bids >= reserve, best first, while the
  offer lasts, and BidReject to every other, each with reply_to = the bid; a failed
  device rejects at once (REJECT_UNAVAILABLE);
- BESSStatus to every authenticated session every status_ms (devices spread over
  10 ms ticks, so the fleet sends evenly rather than in one burst);
- DeviceFailure to every session when the parent says so, at a given wall time.

Runs as a child process: the first stdin line is the JSON config (keys included:
keys never travel on the command line), then one JSON command per line. Its
"aggregators" are the aggregators' master secrets: each device derives its pair key
with each of them (protocol/auth.py derive, LABEL_ETP), standing in for enrollment,
so the hub's aggregators and the devices share exactly one key per pair. Then:
{"cmd": "status_ms", "ms": 20} (0: none), {"cmd": "fail", "at_ms": T}, {"cmd": "recover"},
{"cmd": "stats"}, {"cmd": "trace"}, {"cmd": "stop"}. It answers on stdout with
JSON lines: {"ready": [[device_id, address, port], ...]}, {"stats": {...}} and
{"trace": {...}} (timings of each answered bid and each DeviceFailure burst since
the last trace, for the hub's latency breakdown). End of stdin (the parent is
gone) stops it.
"""

import asyncio
import json
import os
import resource
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT / "firmware"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from auction import Auction, Bid  # noqa: E402  (firmware/auction.py)
from reserve import reserve_price  # noqa: E402  (firmware/reserve.py)

from protocol import auth, frame, message, pairing  # noqa: E402
from transport.links import now_ms  # noqa: E402

Message = message.Message
WRITE_LIMIT = 256 * 1024  # bytes waiting in a session's user-space buffer: skip status
TICK_MS = 10
READ_SIZE = 65536
# Kernel receive timestamps on TCP (Linux; the asm-generic value, x86-64 and arm64).
STAMPS = sys.platform.startswith("linux")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
ANCILLARY_SIZE = socket.CMSG_SPACE(TIMESPEC.size) if STAMPS else 0


class Counters:
    def __init__(self):
        self.sent = [0] * 10  # frames written, by message type
        self.bad = 0  # frames the decoder dropped
        self.skipped = 0  # status frames not sent: the session's buffer was full
        self.late_ticks = 0  # status ticks more than one tick late (this process is busy)


class Session:
    """One aggregator's TCP session with a device, on a bare non-blocking socket (not an
    asyncio transport: recvmsg() brings the kernel's receive timestamp, SO_TIMESTAMPNS,
    so the bench can tell when a frame reached this battery from when this process, one
    of many batteries sharing a CPU, got round to reading it)."""

    __slots__ = ("device", "sock", "fd", "peer", "decoder", "out", "arrived_ms", "_auth_timer")

    def __init__(self, device, sock):
        self.device = device
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = None
        self.decoder = frame.StreamDecoder(device.codec)
        self.out = bytearray()  # what the kernel did not take yet
        self.arrived_ms = None  # kernel receive time of the last bytes read (ms, float)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if STAMPS:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self.readable)
        device.sessions.append(self)
        self._auth_timer = loop.call_later(device.fleet.auth_ms / 1000, self._auth_check)

    def _auth_check(self):
        if self.peer is None:
            self.close()

    def readable(self):
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(READ_SIZE, ANCILLARY_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.arrived_ms = None
        for level, kind, stamp in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= 16:
                sec, ns = TIMESPEC.unpack_from(stamp)
                self.arrived_ms = sec * 1e3 + ns / 1e6
        self.decoder.feed(data)
        device = self.device
        for got in self.decoder.frames(now_ms(), device.fleet.dropped):
            device.received(self, got)

    def write(self, data):
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            asyncio.get_running_loop().add_writer(self.fd, self.writable)

    def writable(self):
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.out[:sent]
        if not self.out:
            asyncio.get_running_loop().remove_writer(self.fd)

    def buffered(self):
        return len(self.out)

    def close(self):
        device = self.device
        if self in device.sessions:
            device.sessions.remove(self)
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.fd)
            loop.remove_writer(self.fd)
            self._auth_timer.cancel()
            self.sock.close()


class Device:
    def __init__(self, fleet, index, device_id, address, masters):
        self.fleet = fleet
        self.device_id = device_id
        self.address = address
        # Its pair key with each aggregator, under the aggregator's id (as config.json's
        # "keys" hold them after enrollment).
        keys = {a: pairing.derive(m, pairing.LABEL_ETP, device_id) for a, m in masters.items()}
        self.codec = frame.Codec(auth.Keyring(keys), key_id=device_id)
        self.ids = message.MessageIds(now_ms())
        self.sessions = []
        self.capacity_kwh = 10.0 + index % 7
        self.soc_pct = 40.0 + (index * 37) % 55
        self.remaining_kwh = self.capacity_kwh * self.soc_pct / 100
        self.voltage = 48.0 + index % 5
        self.max_kw = 5.0
        self.floor = 10.0 + index % 5
        self.reserve = reserve_price(self.floor, self.soc_pct, message.HEALTH_GOOD)
        self.offer_kwh = round(self.remaining_kwh * 0.5, 4)
        self.auction = None
        self.failed = False
        self.server = None

    def start(self, port=0):
        """Listen on the device's address (any free port: 0) -> the port."""
        server = self.server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.address, port))
        server.listen(self.fleet.max_peers + 2)
        server.setblocking(False)
        asyncio.get_running_loop().add_reader(server.fileno(), self.accept)
        return server.getsockname()[1]

    def accept(self):
        while True:
            try:
                sock, _addr = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: the hub's link retries
                return
            if len(self.sessions) >= self.fleet.max_peers:
                sock.close()
            else:
                Session(self, sock)

    def stop(self):
        asyncio.get_running_loop().remove_reader(self.server.fileno())
        self.server.close()
        for session in list(self.sessions):
            session.close()

    def send(self, session, msg, reply_to=0):
        """Seal with the time of sending and write; -> that time (the frame's sent_ms)."""
        at = now_ms()
        session.write(self.codec.seal(msg, at, reply_to, to=session.peer))
        self.fleet.counters.sent[msg[0]] += 1
        return at

    def session_of(self, peer):
        for session in self.sessions:
            if session.peer == peer:
                return session
        return None

    def received(self, session, got):
        if got.group or got.key_id == self.device_id:
            return
        if session.peer is None:
            session.peer = got.key_id
        elif got.key_id != session.peer:
            return
        msg = got.message
        kind = msg[0]
        if kind == message.QUERY:
            self.send(session, self.query_response(), msg.message_id)
        elif kind == message.BID:
            self.bid(session, msg, got.sent_ms)
        elif kind == message.TERMINATE:
            session.close()

    def query_response(self):
        kwh, reserve = (0.0, 0.0) if self.failed else (self.offer_kwh, self.reserve)
        return Message(
            message.QUERY_RESPONSE, self.ids.next(), self.device_id, 10, 0.0, reserve, kwh,
            min(100.0, 100.0 * kwh / self.capacity_kwh), 0.0, 0, self.remaining_kwh,
            message.HEALTH_GOOD, self.voltage, self.max_kw,
        )  # fmt: skip

    def bid(self, session, msg, sent_ms):
        if self.failed:
            reject = Message(
                message.BID_REJECT, self.ids.next(), self.device_id, 10, msg.bid_price, 0.0, 0.0,
                0.0, 0.0, message.REJECT_UNAVAILABLE, 0.0, 0, 0.0, 0.0,
            )  # fmt: skip
            self.send(session, reject, msg.message_id)
            return
        now = now_ms()
        if self.auction is None:
            self.auction = Auction(self.reserve, self.offer_kwh, self.fleet.auction_ms, now)
            asyncio.get_running_loop().call_later(self.fleet.auction_ms / 1000, self.close_auction)
        bid = Bid(session.peer, msg.message_id, msg.bid_price, msg.required_energy_amount, now)
        # For the latency breakdown: the hub's send time, when the bid reached this
        # battery's socket (the kernel's stamp) and when this process read it.
        read = time.time_ns() / 1e6
        bid.times = (sent_ms, session.arrived_ms or read, read)
        self.auction.add(bid)

    def close_auction(self):
        auction, self.auction = self.auction, None
        if auction is None:  # the device failed meanwhile: like the firmware, no answers
            return
        winners, rejects = auction.close()
        answers = []
        for bid, kwh in winners:
            # The firmware's message.bid_accept()/bid_reject() build the same bodies;
            # the namedtuple is built directly to spare this one core's CPU.
            answers.append((bid, Message(
                message.BID_ACCEPT, self.ids.next(), self.device_id, 10, bid.price,
                bid.price, 0.0, 0.0, kwh, 0, 0.0, 0, 0.0, 0.0,
            )))  # fmt: skip
        for bid, reason in rejects:
            answers.append((bid, Message(
                message.BID_REJECT, self.ids.next(), self.device_id, 10, bid.price,
                auction.reserve, 0.0, 0.0, 0.0, reason, 0.0, 0, 0.0, 0.0,
            )))  # fmt: skip
        trace = self.fleet.bid_trace
        for bid, answer in answers:
            session = self.session_of(bid.peer)
            if session is not None:
                at = self.send(session, answer, bid.message_id)
                trace.append((bid.peer, bid.message_id, *bid.times, auction.closes_ms, at))

    def status(self, burst=1):
        """BESSStatus to every authenticated session; burst > 1 writes that many
        status frames (each with its own message_id) in one write."""
        counters = self.fleet.counters
        for session in self.sessions:
            if session.peer is None:
                continue
            if session.buffered() > WRITE_LIMIT:
                counters.skipped += burst
                continue
            at = now_ms()
            health = message.HEALTH_FAULT if self.failed else message.HEALTH_GOOD
            data = b"".join(
                self.codec.seal(Message(
                    message.BESS_STATUS, self.ids.next(), self.device_id, 10, 0.0, 0.0,
                    self.capacity_kwh, self.soc_pct, 0.0, 0, self.remaining_kwh, health,
                    self.voltage, 0.0,
                ), at, to=session.peer)
                for _ in range(burst)
            )  # fmt: skip
            session.write(data)
            counters.sent[message.BESS_STATUS] += burst

    def fail(self):
        self.failed = True
        self.auction = None
        msg = Message(
            message.DEVICE_FAILURE, self.ids.next(), self.device_id, 10, 0.0, 0.0, 0.0, 0.0,
            0.0, message.FAIL_BMS_ALARM, self.remaining_kwh, message.HEALTH_FAULT,
            self.voltage, 0.0,
        )  # fmt: skip
        at = None
        for session in self.sessions:
            if session.peer is not None:
                at = self.send(session, msg)
        return at


class DeviceFleet:
    device_class = Device  # bench/soak_devices.py's fleet makes its own kind

    def __init__(self, cfg):
        self.auction_ms = cfg["auction_ms"]
        self.status_ms = cfg["status_ms"]
        self.burst = 1
        self.auth_ms = cfg.get("auth_ms", 10000)
        self.max_peers = cfg.get("max_peers", 8)
        self.counters = Counters()
        # (peer, bid id, bid sent_ms, reached the socket, read, auction due, answer sent_ms)
        self.bid_trace = []
        self.fail_trace = []  # (trigger ms, first DeviceFailure sent_ms, last)
        # The aggregators' master secrets, their pads hashed once for all the derivations.
        masters = {int(k): auth.HmacKey(bytes.fromhex(v)) for k, v in cfg["aggregators"].items()}
        self.devices = [  # the device's own key (4th) seals nothing: pair keys do
            self.device_class(self, index, device_id, address, masters)
            for index, device_id, address, _key in cfg["devices"]
        ]
        self.cpu_started = time.process_time()

    def dropped(self, _exc):
        self.counters.bad += 1

    async def status_loop(self):
        loop = asyncio.get_running_loop()
        tick = 0
        due = loop.time()
        while True:
            if not self.status_ms:  # paused
                await asyncio.sleep(TICK_MS / 1000)
                due = loop.time()
                continue
            groups = max(1, min(len(self.devices), self.status_ms // TICK_MS))
            interval = self.status_ms / groups / 1000
            due += interval
            delay = due - loop.time()
            if delay < -interval:  # more than a tick behind: do not catch up in a burst
                self.counters.late_ticks += 1
                due = loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))
            group = tick % groups
            tick += 1
            burst = self.burst
            for device in self.devices[group::groups]:
                device.status(burst)

    def fail_all(self, at_ms):
        sent = [device.fail() for device in self.devices]
        sent = [at for at in sent if at is not None]
        if sent:
            self.fail_trace.append((at_ms, min(sent), max(sent)))

    def stats(self):
        c = self.counters
        return {
            "sent": c.sent,
            "bad": c.bad,
            "skipped": c.skipped,
            "late_ticks": c.late_ticks,
            "cpu_s": time.process_time() - self.cpu_started,
            "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_config():
    """-> (stdin's reader, the JSON config on its first line; None: stdin ended)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    return reader, json.loads(line) if line else None


def run_child(main):
    """asyncio.run(main()) in a child the parent may interrupt or leave."""
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, BrokenPipeError):
        pass


async def main():
    loop = asyncio.get_running_loop()
    reader, cfg = await read_config()
    if cfg is None:
        return
    # The open-files limit: the parent raised it for us (inherited).
    if cfg.get("cpus"):
        try:
            os.sched_setaffinity(0, cfg["cpus"])
        except (AttributeError, OSError):
            pass
    fleet = DeviceFleet(cfg)
    del cfg  # the keys: only the codecs keep them
    ports = [device.start() for device in fleet.devices]
    reply({"ready": [[d.device_id, d.address, p] for d, p in zip(fleet.devices, ports)]})
    ticker = asyncio.create_task(fleet.status_loop())
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            what = cmd["cmd"]
            if what == "status_ms":
                fleet.status_ms = max(0, int(cmd["ms"]))  # 0: no status
                fleet.burst = max(1, int(cmd.get("burst", 1)))
            elif what == "fail":
                at_ms = cmd["at_ms"]
                loop.call_later(max(0.0, (at_ms - now_ms()) / 1000), fleet.fail_all, at_ms)
            elif what == "recover":
                for device in fleet.devices:
                    device.failed = False
            elif what == "stats":
                reply({"stats": fleet.stats()})
            elif what == "trace":
                reply({"trace": {"bids": fleet.bid_trace, "fails": fleet.fail_trace}})
                fleet.bid_trace, fleet.fail_trace = [], []
            elif what == "stop":
                break
    finally:
        ticker.cancel()
        for device in fleet.devices:
            device.stop()


if __name__ == "__main__":
    run_child(main)
