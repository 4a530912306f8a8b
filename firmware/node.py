"""The battery's ETP node: discovery on the multicast group, bidding over TCP
with several aggregators at once, status, and DeviceFailure.

- Group (UDP multicast, group key): Register at boot and every register_s;
  every Query is answered with a QueryResponse on the group, so all
  aggregators see every offer. A Query's bid_price carries the market's price
  signal, which feeds the reserve price (reserve.py).
- TCP (a pair key per aggregator: only that aggregator and this battery hold
  it): up to max_peers authenticated sessions, and apart from them up to
  max_unauthenticated connections not yet authenticated (a slow-loris pool: one more is
  closed at once, and none takes an aggregator's place). A connection must
  authenticate within auth_ms of its accept (a deadline, not a per-read
  timeout) and before it sends _UNAUTH_BAD bad frames (which bounds the HMAC
  work a stranger gets); one that stops reading our frames (a write that cannot
  drain in 2 s) is dropped too. Unauthenticated or unknown peers get nothing
  back, ever. The trusted aggregators follow config.json's "keys" while running
  (follow_trust).
- Refused frames (bad bytes, tags, keys, replays, another device's) are
  counted per peer address (TCP) or for the group, and logged at most once per
  _REFUSED_S per peer: "refused N frames from PEER in the last 10 s: REASON".
  The table holds _PEERS peers; more share one line ("other peers").
- Auctions (auction.py): a Query opens an offer; Bids collect until the
  auction closes; the winner gets a BidAccept, the others BidRejects, at the
  close; a BidConfirm answering our BidAccept makes the contract (execution.py).
- BESSStatus to every session each status_ms; DeviceFailure to every session
  and the group as soon as the BMS alarms or its link is lost.
"""

import asyncio
import socket

from auction import Auction, Bid
from reserve import offer_kwh, reserve_price

from protocol import frame, message
from protocol.compat import const
from protocol.errors import ETPError

_WRITE_MS = const(2000)
_READ_SIZE = const(512)
_TRUST_S = const(2)  # how often config.json is checked for a changed trust list
_UNAUTH_BAD = const(8)  # bad frames a connection may send before it authenticates
_REFUSED_S = const(10)  # refusals from one peer are logged at most this often
_PEERS = const(4)  # peers counted apart; the others share one entry


async def close(writer):
    """Close a TCP stream. MicroPython's close() does nothing: wait_closed() closes."""
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


class Session(frame.StreamDecoder):
    """One aggregator's connection, and the decoder of its stream (one object, not two:
    a small heap pays per object)."""

    def __init__(self, codec, writer, timeout=0):
        super().__init__(codec)
        self.writer = writer
        self.peer = None  # the aggregator's key id, once a frame authenticated
        self.timeout = timeout  # ms: authenticated by then, or closed
        self.count = 0  # frames refused


def address(writer):
    """The peer's IPv4 address: CPython gives (host, port), MicroPython's unix port a raw
    sockaddr (family, port, then the 4 address bytes), a board's a tuple."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple):
        return peer[0]
    if isinstance(peer, (bytes, bytearray)) and len(peer) >= 8:
        return "%d.%d.%d.%d" % tuple(peer[4:8])
    return "?"


class Node:
    def __init__(self, cfg, board, plant, executor, codec, ids, log):
        self.cfg = cfg
        self.board = board
        self.plant = plant
        self.executor = executor
        self.codec = codec
        self.ids = ids
        self.log = log
        self.device_id = cfg["device_id"]
        self.sessions = []
        self.offer = None  # the open offer: its Auction (kwh, reserve, slot_start)
        self.accepted = {}  # our BID_ACCEPT id -> (peer, bid id, price, kWh, expiry ms, slot)
        self.price_signal = 0.0
        self.failure = None  # (cause, text) while the battery is faulted
        self._group = None  # (socket, address) to send to the group, once discovery runs
        self.skipped = {}  # peer -> [frames refused since last said, last reason, said at ms]

    # --- sending --------------------------------------------------------------

    async def send(self, session, msg, reply_to=0):
        """Send on a TCP session; a peer that stops reading is dropped."""
        if session not in self.sessions:  # dropped meanwhile (a caller's list is a copy)
            return
        data = self.codec.seal(msg, self.board.now_ms(), reply_to, to=session.peer)
        writer = session.writer
        try:
            writer.write(data)
            # MicroPython's stream sends at once what the socket takes and keeps the rest
            # in out_buf: with nothing left there is nothing to drain, and no wait_for
            # (a task and two coroutines on every frame) to churn a small heap.
            if getattr(writer, "out_buf", True):
                await asyncio.wait_for(writer.drain(), _WRITE_MS / 1000)
        except (OSError, asyncio.TimeoutError):
            self.log("peer %s stopped reading: dropped" % session.peer)
            await self.drop(session)

    async def send_to_peer(self, peer, msg, reply_to=0):
        for session in list(self.sessions):
            if session.peer == peer:
                await self.send(session, msg, reply_to)
                return True
        return False

    def send_hub(self, msg, reply_to=0):
        """A receipt (an outcome report) or status for the market maker, sealed with our
        pair key with it, to the group's address, where it listens: it proves the hub
        this battery's word, and no aggregator can make or alter it on the way. Other
        batteries drop it at once (they hold no key for our id)."""
        hub = self.cfg["hub_id"]
        if self._group is None or hub not in self.codec.keyring:
            return
        data = self.codec.seal(msg, self.board.now_ms(), reply_to, to=hub)
        try:
            self._group[0].sendto(data, self._group[1])
        except OSError as exc:
            self.log("hub send failed: %s" % exc)

    def send_group(self, msg, reply_to=0):
        """To the group (membership only: any member could have made it), and the same
        sealed for the market maker, which takes a battery's offer, registration and
        failure only as the battery's own word."""
        if self._group is None:
            return
        data = self.codec.seal(msg, self.board.now_ms(), reply_to=reply_to, group=True)
        try:
            self._group[0].sendto(data, self._group[1])
        except OSError as exc:  # no route yet (Wi-Fi down): the next one will go
            self.log("group send failed: %s" % exc)
        self.send_hub(msg, reply_to)

    async def follow_trust(self, path):
        """Enrollment and revocation without a restart: when config.json changes (the
        owner ran `gridbid device trust` or `revoke`), its "keys" are read again. An
        aggregator no longer trusted loses its session at once and can open no other;
        its contracts run to their end (execution.py reports them when it can)."""
        import json
        import os

        from protocol.compat import unhexlify

        seen = self.cfg.pop("stamp", None)  # the file as config.load read it
        while True:
            try:
                stamp = os.stat(path)
                stamp = (stamp[1], stamp[6], stamp[8])  # inode (a rename), size, mtime
            except OSError:
                stamp = seen
            if seen is not None and stamp != seen:
                try:
                    with open(path) as f:
                        keys = json.load(f)["keys"]
                    keys = {int(k): unhexlify(v) for k, v in keys.items()}
                    for peer, secret in keys.items():  # all checked before any is used
                        if peer in (self.cfg["key_id"], self.cfg["hub_id"]) or not 0 < peer < 2**32:
                            raise ValueError("a key under id %d" % peer)
                        if len(secret) < 16:
                            raise ValueError("aggregator %d's key is too short" % peer)
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    self.log("config.json changed, keys not reloaded: %s" % exc)
                    keys = None
                if keys is not None:
                    await self.trust(keys)
            seen = stamp
            await asyncio.sleep(_TRUST_S)

    async def trust(self, keys):
        """Trust exactly these aggregators ({key id: pair key})."""
        keyring = self.codec.keyring
        for peer in list(keyring):
            if peer not in keys and peer != self.cfg["hub_id"]:  # the hub's is not theirs
                keyring.remove(peer)
                self.log("aggregator %d is no longer trusted" % peer)
        for peer, secret in keys.items():
            if peer not in keyring:
                self.log("aggregator %d is trusted" % peer)
            keyring.add(peer, secret)
        # Its sessions leave the list before the first await, so no task seals for a
        # peer whose key is gone; then they are closed.
        gone = [s for s in self.sessions if s.peer is not None and s.peer not in keyring]
        for session in gone:
            self.sessions.remove(session)
        for session in gone:
            await close(session.writer)

    async def drop(self, session):
        if session in self.sessions:
            self.sessions.remove(session)
        await close(session.writer)

    # --- TCP sessions -----------------------------------------------------------

    async def serve(self):
        cfg = self.cfg
        return await asyncio.start_server(
            self.session,
            cfg["bind"],
            cfg["tcp_port"],
            backlog=cfg["max_peers"] + cfg["max_unauthenticated"],
        )

    async def session(self, stream, writer):
        """One aggregator's connection; stream is what we read (MicroPython passes the
        same Stream object twice)."""
        cfg, now = self.cfg, self.board.now_ms()
        if sum(1 for s in self.sessions if s.peer is None) >= cfg["max_unauthenticated"]:
            why = "a connection: %d not yet authenticated already" % cfg["max_unauthenticated"]
            self._dropped(address(writer), why)
            await close(writer)
            return
        session = Session(self.codec, writer, now + cfg["auth_ms"])
        self.sessions.append(session)
        try:
            while session in self.sessions:
                if session.peer is not None:  # no timeout: no wait_for task per read
                    data = await stream.read(_READ_SIZE)
                else:
                    try:  # the deadline is from accept: a byte now and then does not move it
                        left = session.timeout - self.board.now_ms()
                        if left <= 0:
                            raise asyncio.TimeoutError
                        data = await asyncio.wait_for(stream.read(_READ_SIZE), left / 1000)
                    except asyncio.TimeoutError:
                        self.log("a connection never authenticated: closed")
                        break
                if not data:
                    break
                session.feed(data)
                while session in self.sessions:
                    try:
                        got = session.next(self.board.now_ms())
                    except ETPError as exc:
                        self._dropped(address(writer), exc)
                        session.count += 1
                        if session.peer is None and session.count >= _UNAUTH_BAD:
                            return  # a stranger's HMAC work is bounded
                        continue
                    if got is None:
                        break
                    if not await self.received(session, got):
                        return
        except OSError as exc:
            if session in self.sessions:  # not one we closed (a revoked peer's)
                self.log("peer %s: %s" % (session.peer, exc))
        finally:
            await self.drop(session)

    def _dropped(self, peer, reason):
        """Count a refused frame (or connection) from peer, and say each peer's refusals
        not said for _REFUSED_S (a new peer's first at once); forget quiet peers.
        _dropped(None, None) only says what is due (status() calls it)."""
        table, now_ms = self.skipped, self.board.now_ms()
        if peer is not None:
            if peer not in table and len(table) >= _PEERS:
                peer = "other peers"
            entry = table.get(peer)
            if entry is None:
                entry = table[peer] = [0, None, now_ms - _REFUSED_S * 1000]
            entry[0] += 1
            entry[1] = reason
            if now_ms - entry[2] < _REFUSED_S * 1000:
                return
        for peer, entry in list(table.items()):
            if now_ms - entry[2] < _REFUSED_S * 1000:
                continue
            if entry[0]:
                reason = entry[1]
                if isinstance(reason, Exception):
                    reason = "%s: %s" % (type(reason).__name__, reason)
                self.log("refused %d frames from %s in the last %d s: %s"
                         % (entry[0], peer, _REFUSED_S, reason))  # fmt: skip
                entry[0], entry[2] = 0, now_ms
            else:
                del table[peer]

    async def received(self, session, got):
        if got.group or got.key_id in (self.cfg["key_id"], self.cfg["hub_id"]):
            # the group proves membership only, and the market maker never trades
            why = "a frame on TCP from %d (group, ours or the hub's)" % got.key_id
            self._dropped(address(session.writer), why)
            return True
        if got.message.device_id != self.device_id:  # a frame for another battery, replayed
            why = "a frame from %d for device %d" % (got.key_id, got.message.device_id)
            self._dropped(address(session.writer), why)
            return True
        if session.peer is None:  # the aggregators' sessions are max_peers at most
            if sum(1 for s in self.sessions if s.peer is not None) >= self.cfg["max_peers"]:
                self.log("refused a connection from aggregator %d: %d aggregators already"
                         % (got.key_id, self.cfg["max_peers"]))  # fmt: skip
                return False
            session.peer = got.key_id
            self.log("aggregator %d connected" % got.key_id)
            await self.executor.report(self)
        elif got.key_id != session.peer:
            why = "a frame from %d on %d's session" % (got.key_id, session.peer)
            self._dropped(address(session.writer), why)
            return True
        msg = got.message
        kind = msg.message_type
        if kind == message.QUERY:
            if msg.bid_price > 0:  # the market's price signal (reserve.py)
                self.price_signal = msg.bid_price
            await self.send(session, self.answer_query(), msg.message_id)
        elif kind == message.BID:
            await self.bid(session, msg)
        elif kind == message.BID_CONFIRM:
            await self.confirm(session, got)
        elif kind == message.TERMINATE:
            self.log("aggregator %d ended its session" % session.peer)
            return False
        return True

    # --- offers and auctions ----------------------------------------------------

    def current_offer(self):
        """The open offer, or a new one; None while the battery has nothing to sell."""
        offer, now = self.offer, self.board.now_ms()
        if offer is not None:
            if offer.closes_ms is not None or now // 1000 < offer.slot_start:
                return offer
            self.offer = None  # its slot began unsold: offer the next one
        if self.failure is not None:
            return None
        cfg, plant = self.cfg, self.plant
        reserve = reserve_price(
            cfg["reserve_floor"], plant.soc_pct, plant.health_code(), self.price_signal
        )
        stored = offer_kwh(
            plant.remaining_kwh, plant.capacity_kwh, cfg["min_soc_pct"], cfg["sell_pct"],
            self.executor.committed_kwh(),
        )  # fmt: skip
        start, free = self.executor.free_slot(now // 1000, cfg["slots_ahead"])
        kwh = round(min(free, stored), 4)
        if reserve is None or kwh <= 0:
            return None
        self.offer = Auction(reserve, kwh, cfg["auction_ms"], now, start)
        return self.offer

    def answer_query(self):
        offer = self.current_offer()
        plant = self.plant
        kwh, reserve = (offer.kwh, offer.reserve) if offer else (0.0, 0.0)
        capacity = plant.capacity_kwh or 0.0
        pct = 100.0 * kwh / capacity if capacity else 0.0
        return message.query_response(
            self.ids.next(), self.device_id, reserve, kwh, min(pct, 100.0),
            plant.remaining_kwh or 0.0, plant.health_code(), plant.voltage_v or 0.0,
            self.cfg["max_kw"],
        )  # fmt: skip

    async def bid(self, session, msg):
        offer = self.current_offer()
        if offer is None:
            reject = message.bid_reject(
                self.ids.next(), self.device_id, msg.bid_price, 0.0, message.REJECT_UNAVAILABLE
            )
            await self.send(session, reject, msg.message_id)
            return
        now = self.board.now_ms()
        offer.add(Bid(session.peer, msg.message_id, msg.bid_price, msg.required_energy_amount, now))
        self.log("bid %.2f c/kWh from aggregator %d" % (msg.bid_price, session.peer))

    async def close_auctions(self):
        """Close the open auction when due; answer every bidder. Sleeps until the close
        once a bid set it (a board should not wake 100 times a second for nothing)."""
        while True:
            offer, now = self.offer, self.board.now_ms()
            if offer is not None and offer.due(now):
                self.offer = None
                await self.answer_bids(offer)
                continue
            closes = offer.closes_ms if offer is not None else None
            await asyncio.sleep(0.02 if closes is None else (closes - now) / 1000)

    async def answer_bids(self, auction):
        winners, rejects = auction.close()
        now = self.board.now_ms()
        for accept_id in [a for a, v in self.accepted.items() if v[4] < now]:
            del self.accepted[accept_id]  # void: not confirmed in time
        expiry = now + self.cfg["confirm_ms"]
        for bid, kwh in winners:
            accept = message.bid_accept(self.ids.next(), self.device_id, bid.price, bid.price, kwh)
            self.accepted[accept.message_id] = (
                bid.peer, bid.message_id, bid.price, kwh, expiry, auction.slot_start
            )  # fmt: skip
            await self.send_to_peer(bid.peer, accept, bid.message_id)
            self.log(
                "accepted %.2f c/kWh for %.4f kWh from aggregator %d" % (bid.price, kwh, bid.peer)
            )
        for bid, reason in rejects:
            reject = message.bid_reject(
                self.ids.next(), self.device_id, bid.price, auction.reserve, reason
            )
            await self.send_to_peer(bid.peer, reject, bid.message_id)
        self.log(
            "auction closed: %d bids, reserve %.2f" % (len(winners) + len(rejects), auction.reserve)
        )

    async def confirm(self, session, got):
        accepted = self.accepted.get(got.reply_to)
        if accepted is None or accepted[0] != session.peer or accepted[4] < self.board.now_ms():
            self.log("a confirm from %d answers no live accept of ours: ignored" % session.peer)
            return
        del self.accepted[got.reply_to]
        peer, bid_id, price, kwh, _expiry, slot_start = accepted
        msg = got.message
        if 0 < msg.required_energy_amount < kwh:
            kwh = msg.required_energy_amount
        kw = min(msg.discharge_rate or self.cfg["max_kw"], self.cfg["max_kw"])
        try:
            deal = self.executor.contract_from_confirm(
                peer, bid_id, price, kwh, kw, msg.message_id, slot_start
            )
        except (ValueError, OSError) as exc:
            self.log("could not record the contract from %d: %s" % (peer, exc))
            return
        self.log(
            "contract %s with aggregator %d: %s" % (deal.contract_id, peer, deal.market_slot_name)
        )

    # --- the group ----------------------------------------------------------------

    async def discovery(self):
        """The group: Register, then answer every Query. Its sockets are closed when it
        fails, so that app.supervise can start it again."""
        cfg = self.cfg
        address = socket.getaddrinfo(cfg["group_addr"], cfg["group_port"])[0][-1]
        sender = self.board.group_sender(cfg["bind"])
        receiver = None
        try:
            receiver = self.board.group_receiver(cfg["group_addr"], cfg["group_port"])
            self._group = (sender, address)
            self.register()
            while True:
                data = await self.board.receive(receiver)
                if len(data) > 3 and not data[3] & frame.FLAG_GROUP:
                    continue  # sealed for the market maker (ours or another battery's)
                try:
                    got = self.codec.open(data, self.board.now_ms())
                except ETPError as exc:
                    self._dropped("the multicast group", exc)
                    continue
                if got.key_id != cfg["key_id"] and got.message.message_type == message.QUERY:
                    if got.message.bid_price > 0:
                        self.price_signal = got.message.bid_price
                    self.send_group(self.answer_query(), got.message.message_id)
        finally:
            self._group = None
            sender.close()
            if receiver is not None:
                receiver.close()

    def register(self):
        plant = self.plant
        self.send_group(
            message.register(
                self.ids.next(),
                self.device_id,
                plant.capacity_kwh or 0.0,
                plant.remaining_kwh or 0.0,
                plant.health_code(),
                plant.voltage_v or 0.0,
                self.cfg["max_kw"],
            )  # fmt: skip
        )

    # --- status and failure ---------------------------------------------------------

    async def status(self):
        """BESS_STATUS to every session each status_ms, and a Register on the group every
        register_s: one task for both (each task costs a small heap ~250 bytes)."""
        registered = last = self.board.now_ms()  # discovery() registers at start
        while True:
            await asyncio.sleep(self.cfg["status_ms"] / 1000)
            now = self.board.now_ms()
            if now - registered >= self.cfg["register_s"] * 1000:
                registered = now
                self.register()
            plant = self.plant
            capacity = plant.capacity_kwh or 0.0
            remaining = plant.remaining_kwh or 0.0
            msg = message.bess_status(
                self.ids.next(), self.device_id, capacity, remaining,
                100.0 * remaining / capacity if capacity else 0.0, plant.health_code(),
                plant.voltage_v or 0.0, max(0.0, (plant.power_w or 0.0) / 1000),
            )  # fmt: skip
            for session in list(self.sessions):
                if session.peer is not None:
                    await self.send(session, msg)
            if self.skipped:
                self._dropped(None, None)
            if now - last >= self.cfg["hub_status_s"] * 1000:  # to the market maker too
                last = now
                self.send_hub(msg)

    async def watch_battery(self):
        """Poll the BMS alarms fast; a fault stops discharge and is announced at once."""
        while True:
            now = self.board.now_ms()
            await self.plant.poll_battery_alarms(now)
            fault = self.plant.bms_fault(now)
            if fault is not None and self.failure is None:
                await self.fail(fault, now)
            elif fault is None and self.failure is not None:
                self.failure = None
                self.executor.recovered()
                self.log("battery recovered")
                self.register()
            await asyncio.sleep(self.cfg["alarm_poll_ms"] / 1000)

    async def fail(self, failure, now_ms):
        """A BMS fault (cause, text) detected at now_ms: announce it, stop discharging."""
        self.failure = failure
        self.offer = None
        cause, text = failure
        plant = self.plant
        msg = message.device_failure(
            self.ids.next(), self.device_id, cause, message.HEALTH_FAULT,
            plant.remaining_kwh or 0.0, plant.voltage_v or 0.0,
        )  # fmt: skip
        self.send_group(msg)
        for session in list(self.sessions):
            if session.peer is not None:
                await self.send(session, msg)
        self.log("DEVICE FAILURE (%s): announced in %d ms" % (text, self.board.now_ms() - now_ms))
        await self.executor.stop_all(self)
