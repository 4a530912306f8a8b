"""Simulated batteries for bench/soak.py: many in one process, each speaking the ETP a
real hub (`gridbid hub run`) needs from a battery, on its own loopback address.

They are bench/hub_load_devices.py's devices (TCP sessions with the aggregators, the
firmware's own Auction and reserve, BESSStatus every status_ms) with what the market
maker's side of firmware/node.py and firmware/execution.py adds:

- the group: a Register at start and every register_s; each of the hub's Queries is
  answered with a QueryResponse on the group and sealed for the hub (send_group), after
  a random delay of up to answer_jitter_ms (a thousand batteries answering in the same
  millisecond is no LAN; the hub's socket buffer would drop most of it);
- BESSStatus for the hub every hub_status_s (send_hub);
- contracts: a BidConfirm answering one of our BidAccepts (within confirm_ms) makes a
  contract; contract_s later it completes in full: a TERMINATE (CompletedSuccess, the
  kWh promised) to the buyer, answering its BidConfirm, and the same receipt to the hub.

No Modbus, no store, no CoAP: these stand in for the firmware where the VM is too heavy
(a thousand of them). Runs as a child process: the first stdin line is the JSON config
(keys included, never on the command line): hub_load_devices' config plus "group"
(the group key), "hub" (the hub's master secret: the hub's pair key with each battery
is derived from it, as `gridbid hub keys` does), "group_addr", "group_port", "port"
(the batteries' ETP TCP port, hub.toml device_port) and the timings above. It answers
{"ready": [...]} and then {"stats": {...}} to {"cmd": "stats"}; {"cmd": "stop"} or the
end of stdin stops it.
"""

import asyncio
import json
import random
import socket
import struct
from collections import deque

from hub_load_devices import Device, DeviceFleet, read_config, reply, run_child

from protocol import auth, contract, frame, message
from transport.discovery import group_socket
from transport.links import now_ms

HUB_ID = 0  # the hub's key id (hub.toml key_id)
KEY_ID = struct.Struct(">I")  # a frame header's sender key id, at offset 4 (protocol/frame.py)
DONE = contract.OUTCOME_CODES[contract.COMPLETED_SUCCESS]


class SoakDevice(Device):
    def __init__(self, fleet, index, device_id, address, masters):
        super().__init__(fleet, index, device_id, address, masters)
        self.codec.keyring.group = fleet.group_key
        self.accepted = {}  # our BidAccept id -> (buyer, kWh, expiry ms)
        self.sender = None

    def start(self, port=0):
        sock = self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.address, 0))  # the hub learns our address from the datagrams
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.setblocking(False)
        return super().start(port)

    def stop(self):
        super().stop()
        self.sender.close()

    def _datagram(self, data):
        try:
            self.sender.sendto(data, self.fleet.group)
        except OSError:  # the socket's buffer is full: UDP, the hub asks again
            self.fleet.counters.skipped += 1

    def send_hub(self, msg, reply_to=0):
        self._datagram(self.codec.seal(msg, now_ms(), reply_to, to=HUB_ID))

    def send_group(self, msg, reply_to=0):
        self._datagram(self.codec.seal(msg, now_ms(), reply_to, group=True))
        self.send_hub(msg, reply_to)

    def register(self):
        self.send_group(message.register(
            self.ids.next(), self.device_id, self.capacity_kwh, self.remaining_kwh,
            message.HEALTH_GOOD, self.voltage, self.max_kw,
        ))  # fmt: skip

    def hub_status(self):
        self.send_hub(message.bess_status(
            self.ids.next(), self.device_id, self.capacity_kwh, self.remaining_kwh,
            self.soc_pct, message.HEALTH_GOOD, self.voltage, 0.0,
        ))  # fmt: skip

    def send(self, session, msg, reply_to=0):
        at = super().send(session, msg, reply_to)
        if msg[0] == message.BID_ACCEPT:
            expiry = at + self.fleet.confirm_ms
            self.accepted[msg.message_id] = (session.peer, msg.required_energy_amount, expiry)
        return at

    def received(self, session, got):
        if got.message[0] != message.BID_CONFIRM or session.peer != got.key_id:
            super().received(session, got)
            return
        now = now_ms()
        for accept_id in [a for a, v in self.accepted.items() if v[2] < now]:
            del self.accepted[accept_id]  # void: not confirmed in time (as the firmware)
        accepted = self.accepted.pop(got.reply_to, None)
        if accepted is None or accepted[0] != session.peer:
            return
        kwh = accepted[1]
        if 0 < got.message.required_energy_amount < kwh:
            kwh = got.message.required_energy_amount
        self.fleet.counters.contracts += 1
        confirm_id = got.message.message_id
        loop = asyncio.get_running_loop()
        loop.call_later(self.fleet.contract_s, self.complete, session.peer, confirm_id, kwh)

    def complete(self, buyer, confirm_id, kwh):
        """The contract ran in full: its outcome to the buyer and a receipt to the hub."""
        msg = message.terminate(self.ids.next(), self.device_id, DONE, delivered_kwh=kwh)
        self.send_hub(msg, confirm_id)
        session = self.session_of(buyer)
        if session is not None:
            super().send(session, msg, confirm_id)
        self.fleet.counters.completed += 1


class SoakFleet(DeviceFleet):
    device_class = SoakDevice

    def __init__(self, cfg):
        self.group_key = auth.HmacKey(bytes.fromhex(cfg["group"]))
        self.group = (cfg["group_addr"], cfg["group_port"])
        self.confirm_ms = cfg.get("confirm_ms", 5000)
        self.contract_s = cfg["contract_s"]
        self.jitter_s = cfg.get("answer_jitter_ms", 300) / 1000
        self.hub_status_s = cfg.get("hub_status_s", 5)
        self.register_s = cfg.get("register_s", 30)
        cfg = dict(cfg, aggregators=dict(cfg["aggregators"], **{str(HUB_ID): cfg["hub"]}))
        super().__init__(cfg)
        self.counters.contracts = self.counters.completed = self.counters.queries = 0
        self.bid_trace = deque(maxlen=1)  # hub_load's latency trace: not read here
        # A codec that opens the hub's group Queries (the group key is all it needs).
        self.opener = frame.Codec(auth.Keyring(group=bytes.fromhex(cfg["group"])), key_id=1)
        self.receiver = None
        self.rng = random.Random()

    def listen(self):
        self.receiver = group_socket(*self.group, "127.0.0.1")
        self.receiver.setblocking(False)
        asyncio.get_running_loop().add_reader(self.receiver.fileno(), self.datagrams)
        for device in self.devices:
            device.register()

    def datagrams(self):
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = self.receiver.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            # Only the hub's group frames: every battery's datagrams reach us too.
            if len(data) < 8 or not data[3] & frame.FLAG_GROUP:
                continue
            if KEY_ID.unpack_from(data, 4)[0] != HUB_ID:
                continue
            try:
                got = self.opener.open(data, now_ms())
            except Exception:  # ETPError: not for us, or a replay
                self.counters.bad += 1
                continue
            if got.message[0] != message.QUERY:
                continue
            self.counters.queries += 1
            for device in self.devices:
                if not device.failed:
                    delay = self.rng.uniform(0, self.jitter_s)
                    loop.call_later(delay, self.answer, device, got.message.message_id)

    def answer(self, device, query_id):
        device.send_group(device.query_response(), query_id)

    async def hub_loop(self):
        """Each second a share of the devices: status to the hub every hub_status_s, a
        Register every register_s (spread, as independent batteries are)."""
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            for index, device in enumerate(self.devices):
                if (index + tick) % self.hub_status_s == 0:
                    device.hub_status()
                if (index + tick) % self.register_s == 0:
                    device.register()

    def stats(self):
        c = self.counters
        return dict(super().stats(), contracts=c.contracts, completed=c.completed,
                    queries=c.queries)  # fmt: skip


async def main():
    reader, cfg = await read_config()
    if cfg is None:
        return
    fleet = SoakFleet(cfg)
    ports = [device.start(cfg["port"]) for device in fleet.devices]
    del cfg  # the keys: only the codecs keep them
    fleet.listen()
    reply({"ready": [[d.device_id, d.address, p] for d, p in zip(fleet.devices, ports)]})
    tasks = [asyncio.create_task(fleet.status_loop()), asyncio.create_task(fleet.hub_loop())]
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            what = json.loads(line)["cmd"]
            if what == "stats":
                reply({"stats": fleet.stats()})
            elif what == "stop":
                break
    finally:
        for task in tasks:
            task.cancel()
        for device in fleet.devices:
            device.stop()


if __name__ == "__main__":
    run_child(main)
