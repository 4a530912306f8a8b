"""The battery's CoAP client for the hub's resources (hub/integrations/coap.py): its
clock, its price signal, and its record of this battery's contracts. app.py
starts it with one call, and only when config.json sets coap_hub:

    coap_client.start(cfg, cfg["coap_key"], book, on_price, log)

It sets the clock from GET /time, observes /price (on_price(c/kWh): a second
source of the signal ETP Queries carry; and the market's slot grid, which
governance may move on at a set time: take_grid()) and reconciles the
ContractBook with GET /contracts/<device id> at start and every coap_reconcile_s. Settings
(optional): coap_hub "host:port", coap_reconcile_s 900, coap_ack_ms 2000
(ACK_TIMEOUT), coap_adopt true (see reconcile()); key_id must be device_id.

CoAP is RFC 7252's, reduced to what this needs: GET, CON or NON, a token,
Uri-Path / Observe / Max-Age, piggybacked and separate answers (an empty ACK
stops the retransmissions; a CON answer is ACKed), retransmission from a random
ACK_TIMEOUT..1.5x, doubled MAX_RETRANSMIT times. Requests are signed with the
device's ETP key, answers must be signed by the hub for that request
(protocol/coap.py): an unsigned success is dropped as forged.

MicroPython's asyncio has no datagram endpoints: one task waits for the socket
to be readable (a StreamReader, as board.receive does for the multicast group)
and hands each datagram to the exchange with its token; a request polls its
exchange with asyncio.sleep. The socket is connected to the hub: the kernel
drops datagrams from anyone else.

Heap (64-bit VM, ROMFS; tests/firmware/test_coap_vm.py measures it): ~7 KB for this
module and protocol/coap.py, ~2 KB running, ~3 KB held by a reconcile, and ~80
interned names, which can take the app past the count where MicroPython adds a
7 KB table (firmware/app.py). Imported only when enabled.
"""

import asyncio
import errno
import gc
import json
import os
import socket
import sys
import time

import store

from protocol import coap
from protocol import contract as mc
from protocol.compat import const, ticks_diff, ticks_ms

_ACK_TIMEOUT_MS = const(2000)  # RFC 7252 4.8
_MAX_RETRANSMIT = const(4)
_SEPARATE_MS = const(30000)  # an ACKed request waits this long for its separate response
_MAX_EXCHANGES = const(4)  # requests and observations at once
_DATAGRAM = const(1152)  # RFC 7252 4.6: the largest message the hub sends
_RETRY_S = const(10)
_POLL_MS = const(5)  # how often a request looks for its answer
_MP = sys.implementation.name == "micropython"


class Exchange:
    """One request waiting for its answer; an observation's stays for its notifications."""

    def __init__(self, token, auth, path, on_notify):
        self.token = token
        self.auth = auth  # the request's AUTH value: answers are signed for it
        self.path = path
        self.on_notify = on_notify
        self.mid = -1
        self.acked = False
        self.reply = None  # (code, payload) of the first answer
        self.hub_ms = 0  # the newest signed answer: older notifications are stale
        self.heard = ticks_ms()
        self.max_age = 60  # RFC 7252's default Max-Age


class Client:
    def __init__(self, host, port, key_id, key, log=print, ack_ms=_ACK_TIMEOUT_MS):
        if key is None:
            raise ValueError("no key for key id %d: CoAP requests are signed with it" % key_id)
        self.key_id = key_id
        self.key = key
        self.log = log
        self.ack_ms = ack_ms
        self.offset_ms = 0  # the hub's clock minus ours, from GET /time
        self.exchanges = {}  # token -> Exchange
        self._mid = int.from_bytes(os.urandom(2), "big")
        self.where = (host, port)
        self.sock = None
        self._receiver = None

    def open(self):
        """The socket, connected to the hub, and its reader task. OSError: no network
        yet, or the hub's name does not resolve (try again later)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.connect(socket.getaddrinfo(*self.where)[0][-1])
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self._receiver = asyncio.create_task(self.receive())

    def close(self):
        if self._receiver is not None:
            self._receiver.cancel()
        if self.sock is not None:
            self.sock.close()

    def now_ms(self):
        """Unix ms by the hub's clock (our own until sync_time)."""
        return time.time_ns() // 1000000 + self.offset_ms

    # --- receiving ------------------------------------------------------------------

    async def _datagram(self):
        if not _MP:
            return await asyncio.get_running_loop().sock_recv(self.sock, _DATAGRAM)
        # A stream read(n) would glue datagrams together: wait with it, read with recv.
        await self._reader.read(0)
        return self.sock.recv(_DATAGRAM)

    async def receive(self):
        """The one reader of the socket: every datagram goes to its exchange."""
        if _MP:
            self._reader = asyncio.StreamReader(self.sock)
        while True:
            try:
                data = await self._datagram()
            except OSError as exc:  # ECONNREFUSED (no hub yet), or woken for nothing
                if exc.args[0] != errno.EAGAIN:
                    self.log("coap: receive: %s" % exc)
                    await asyncio.sleep(1)
                continue
            except MemoryError:  # no room for a datagram now: the hub sends it again
                gc.collect()
                self.log("coap: receive: out of memory, a datagram lost")
                continue
            try:
                self._dispatch(coap.decode(data))
            except ValueError as exc:
                self.log("coap: dropped a datagram: %s" % exc)

    def _send(self, data):
        try:
            self.sock.send(data)
        except OSError as exc:  # no route yet (Wi-Fi down): the retransmission tries again
            self.log("coap: send: %s" % exc)

    def _dispatch(self, m):
        if m.code == coap.EMPTY:  # an ACK (the answer comes separately) or a RST
            for ex in self.exchanges.values():
                if ex.mid == m.mid and m.mtype in (coap.ACK, coap.RST):
                    if m.mtype == coap.RST:
                        ex.reply = (coap.EMPTY, b"reset by the hub")
                    ex.acked = True
            return
        ex = self.exchanges.get(m.token)
        if m.mtype == coap.CON or (ex is None and m.mtype == coap.NON):
            # ACK what we expect; reset what we do not (an observation we left: the
            # hub then forgets it)
            kind = coap.RST if ex is None else coap.ACK
            self._send(coap.encode(kind, coap.EMPTY, m.mid))
        if ex is None or m.code < 0x40:  # not ours, or a request
            return
        hub_ms = coap.response_hub_ms(self.key, ex.auth, m.code, ex.path,
                                      coap.option(m.options, coap.AUTH), m.payload)  # fmt: skip
        if hub_ms is None:
            if m.code < 0x80:  # a success must be the hub's: a forged one is dropped
                self.log("coap: dropped an unsigned answer to /%s" % ex.path)
                return
        elif hub_ms <= ex.hub_ms:
            return  # a notification we have, or an older one
        else:
            ex.hub_ms = hub_ms
        ex.heard = ticks_ms()
        age = coap.option(m.options, coap.MAX_AGE)
        ex.max_age = 60 if age is None else coap.to_uint(age)
        observed = coap.option(m.options, coap.OBSERVE) is not None
        if ex.on_notify is not None and observed and m.code == coap.CONTENT:
            ex.on_notify(m.payload)
        if ex.reply is None:
            ex.reply = (m.code, m.payload)

    # --- requests -------------------------------------------------------------------

    async def request(self, path, observe=None, on_notify=None, con=True):
        """GET path -> its Exchange, answered (ex.reply); the caller drops it from
        self.exchanges when done (an observation keeps it). CoapError: no answer."""
        if len(self.exchanges) >= _MAX_EXCHANGES:
            raise coap.CoapError("%d CoAP requests at once already" % _MAX_EXCHANGES)
        rnd = os.urandom(8)
        auth = coap.sign_request(self.key, self.key_id, coap.GET, path, self.now_ms(),
                                 int.from_bytes(rnd[4:], "big"))  # fmt: skip
        options = [] if observe is None else [(coap.OBSERVE, coap.uint(observe))]
        options += coap.path_options(path)
        options.append((coap.AUTH, auth))
        ex = Exchange(rnd[:4], auth, path, on_notify)
        self.exchanges[ex.token] = ex
        self._mid = (self._mid + 1) & 0xFFFF
        ex.mid = self._mid
        data = coap.encode(coap.CON if con else coap.NON, coap.GET, ex.mid, ex.token, options)
        # RFC 7252 4.2: first wait random in [ACK_TIMEOUT, 1.5 x], doubled each time
        wait = self.ack_ms + self.ack_ms * os.urandom(1)[0] // 510
        for _ in range(_MAX_RETRANSMIT + 1 if con else 1):
            self._send(data)
            await self._wait(ex, wait if con else 4 * self.ack_ms)
            if ex.reply is not None or ex.acked:
                break
            wait *= 2
        if ex.reply is None and ex.acked:
            await self._wait(ex, _SEPARATE_MS)
        if ex.reply is None:
            self.exchanges.pop(ex.token, None)
            raise coap.CoapError("no answer from the hub to GET /%s" % path)
        return ex

    async def _wait(self, ex, ms):
        """Until the answer, an ACK not seen before, or ms. Polled: asyncio.Event
        would load a module the app does not use otherwise (~1 KB of heap)."""
        acked = ex.acked
        start = ticks_ms()
        while ex.reply is None and ex.acked == acked and ticks_diff(ticks_ms(), start) < ms:
            await asyncio.sleep(_POLL_MS / 1000)

    async def get(self, path, con=True):
        """GET path -> (code, payload), the answer signed by the hub (an error code may
        come unsigned: 4.01 when the hub refuses us). A stale clock is set and the
        request made once more."""
        for attempt in (0, 1):
            ex = await self.request(path, con=con)
            self.exchanges.pop(ex.token, None)
            if attempt or not await self._stale(ex.reply):
                return ex.reply

    async def _stale(self, reply):
        """The hub refused our timestamp (a board's clock drifts): take its clock."""
        if reply[0] != coap.UNAUTHORIZED or not reply[1].startswith(b"stale"):
            return False
        self.log("coap: the hub says our clock is off: setting it")
        await self.sync_time()
        return True

    async def sync_time(self):
        """Take the hub's clock (GET /time, answered for our nonce) -> hub unix ms."""
        sent = ticks_ms()
        ex = await self.request("time")
        self.exchanges.pop(ex.token, None)
        code, payload = ex.reply
        if code != coap.CONTENT:
            raise coap.CoapError("GET /time: %s %s" % (coap.code_str(code), payload))
        hub = int(payload) + ticks_diff(ticks_ms(), sent) // 2  # half the round trip
        self.offset_ms = hub - time.time_ns() // 1000000
        return hub

    async def observe(self, path, on_notify):
        """Observe path for good: on_notify(payload) on each newer notification; when
        none comes within Max-Age and a retransmission's wait, register again (with a
        new token: the hub's notifications to the old one are reset)."""
        while True:
            ex = None
            try:
                # Its answers are signed for this request's nonce: the old observation's
                # cannot pass for them, so hub_ms need only grow within one (a hub whose
                # clock was set back is then followed at once).
                ex = await self.request(path, observe=0, on_notify=on_notify)
                if ex.reply[0] != coap.CONTENT:
                    if await self._stale(ex.reply):
                        continue
                    raise coap.CoapError("%s %s" % (coap.code_str(ex.reply[0]), ex.reply[1]))
                # The hub notifies every Max-Age / 2: silence past Max-Age (and one
                # retransmission) means notifications were lost, or the hub restarted.
                while True:
                    limit = max(1, ex.max_age) * 1000 + self.ack_ms * 3 // 2
                    left = limit - ticks_diff(ticks_ms(), ex.heard)
                    if left <= 0:
                        break
                    await asyncio.sleep(left / 1000)
                self.log("coap: no notification of /%s in %d ms: observing again" % (path, limit))
            except (coap.CoapError, OSError) as exc:
                self.log("coap: observe /%s: %s" % (path, exc))
                await asyncio.sleep(_RETRY_S)
            finally:
                if ex is not None:
                    self.exchanges.pop(ex.token, None)


# --- reconciling the ContractBook with the hub -----------------------------------------


def reconcile(book, entries, now_s, omitted=0, adopt=None, log=print):
    """Compare the book with the hub's entries (coap.decode_contracts()); log each one
    that differs;
    -> {"agree": n, "missing": [id], "adopted": [id], "unknown": [id], "unsure": [id],
        "state": [(id, device state, hub state)], "terms": [id]}.

    - missing: the hub holds a binding (Confirmed/Active) contract the book lacks (a
      record lost or set aside, or a BidConfirm that came too late). The device does
      not execute a contract it has no record of, unless its terms verify (adopt: the
      battery's config, with market_maker, slot_grid, max_kw; None: never): signed by
      the hub for this request (Client checked), Confirmed, of this device's market
      (maker, slot length), not started yet (no energy can have gone out under it, so
      no meter reading was lost), and within the inverter beside the live contracts of
      its slot. Such a contract is put in the book as Confirmed, with the hub's buyer,
      confirm id and price: it runs, and its outcome goes to the buyer as any other.
      Others are left to the hub, which ends them (CompletedUnknownOutcome) when no
      report comes.
    - unknown: a live contract of the book the hub does not list (unsure instead when
      the hub left some out: it lists at most a few).
    - state / terms: the same id with another state (the hub learns Active and the
      outcome only from the report, so a device ahead of the hub is normal until
      then) or, worse, other terms.
    """
    out = {"agree": 0, "missing": [], "adopted": [], "unknown": [], "unsure": [],
           "state": [], "terms": []}  # fmt: skip
    listed = {}
    for theirs, buyer, confirm_id, price in entries:
        cid = theirs.contract_id
        listed[cid] = True
        ours = book.get(cid)
        if ours is None:
            if theirs.state in (mc.CONFIRMED, mc.ACTIVE):
                if _adopt(book, theirs, buyer, confirm_id, price, now_s, adopt, log):
                    out["adopted"].append(cid)
                else:
                    out["missing"].append(cid)
            continue  # an ended one the book pruned after reporting it: as it should be
        if ours.to_bytes()[2:] != theirs.to_bytes()[2:]:  # all but version and state
            out["terms"].append(cid)
            log("coap: contract %s: our terms %r, the hub's %r" % (cid, ours, theirs))
        elif ours.state != theirs.state:
            out["state"].append((cid, ours.state_name, theirs.state_name))
            log("coap: contract %s is %s here, %s at the hub"
                % (cid, ours.state_name, theirs.state_name))  # fmt: skip
        else:
            out["agree"] += 1
    for ours in book.live():
        if ours.contract_id not in listed:
            out["unsure" if omitted else "unknown"].append(ours.contract_id)
            why = " (it left some out)" if omitted else ""
            log("coap: live contract %s (%s) is not in the hub's list%s"
                % (ours.contract_id, ours.state_name, why))  # fmt: skip
    for cid in out["missing"]:
        log("coap: the hub holds contract %s as binding; this device has no record of it" % cid)
    return out


def _adopt(book, contract, buyer, confirm_id, price, now_s, adopt, log):
    c = contract
    if adopt is None or c.state != mc.CONFIRMED or now_s >= c.start_unix_s:
        return False
    slot_s, _gate, maker, start = mc.parse_slot_name(c.market_slot_name)
    watts = c.avg_power_watts
    for other in book.live():
        if other.start_unix_s == c.start_unix_s:
            watts += other.avg_power_watts
    if (maker != adopt["market_maker"] or slot_s != mc.slot_length(adopt["slot_grid"], start)
            or abs(watts) > adopt["max_kw"] * 1000):  # fmt: skip
        log("coap: contract %s is not one this device can run: not adopted" % c.contract_id)
        return False
    try:
        book.add(c, buyer, confirm_id, price)
    except (ValueError, OSError) as exc:  # BookFull, retired, a failed save
        log("coap: contract %s not adopted: %s" % (c.contract_id, exc))
        return False
    log("coap: adopted contract %s from the hub (%s)" % (c.contract_id, c.market_slot_name))
    return True


def _grid_path(cfg):
    return cfg.get("data_dir", "data") + "/grid.rec"


def take_grid(cfg, grid, log=print):
    """The hub's slot grid [before s, from unix s, after s] (protocol/contract.py
    slot_length): kept in cfg["slot_grid"], and saved before it is used, so that a
    battery that restarts between hearing it and its time still changes over.
    -> True when it is new. A grid that is not one is logged and ignored."""
    try:
        before, at, after = [int(x) for x in grid]
        ok = before > 0 and after > 0 and at >= 0 and at % before == 0 and at % after == 0
    except (TypeError, ValueError):
        ok = False
    gate_s = cfg.get("gate_s", 0)
    if not ok or after <= gate_s or before <= gate_s:
        log("coap: the hub's slot grid %r is not one: ignored" % (grid,))
        return False
    grid = (before, at, after)
    if grid == tuple(cfg["slot_grid"]):
        return False
    try:
        store.make_folder(_grid_path(cfg))
        store.save(_grid_path(cfg), json.dumps(grid).encode())
    except OSError as exc:
        log("coap: slot grid not saved (used anyway): %s" % exc)
    cfg["slot_grid"] = grid
    log("coap: slot grid from the hub: %d s slots until %d, %d s from then" % grid)
    return True


# --- the one call from app.py ----------------------------------------------------------


def start(cfg, key, book, on_price, log=print, on_time=None):
    """Start the client as an asyncio task (None when cfg has no coap_hub); ValueError
    for a bad coap_hub or a missing key (the network is not touched here).
    on_price(c/kWh) for each price the hub publishes (> 0); on_time(unix ms) when
    the clock was taken from the hub (a board may set its RTC)."""
    where = cfg.get("coap_hub")
    if not where:
        return None
    host, _, port = str(where).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError('coap_hub must be "host:port", not %r' % (where,))
    if cfg["key_id"] != cfg["device_id"]:
        raise ValueError("coap_hub needs key_id == device_id (the hub's key for a battery)")
    if key is None:
        raise ValueError("coap_hub needs coap_key (`gridbid hub keys --battery ID` writes it)")
    client = Client(host, int(port), cfg["key_id"], key, log,
                    cfg.get("coap_ack_ms", _ACK_TIMEOUT_MS))  # fmt: skip
    adopt = cfg if cfg.get("coap_adopt", True) else None
    try:  # the grid heard before a restart (a power cut must not take the battery back)
        saved = store.load(_grid_path(cfg))
        grid = json.loads(bytes(saved)) if saved else None
    except (OSError, ValueError) as exc:  # store.CorruptRecord is a ValueError
        log("coap: the saved slot grid is unreadable, keeping config's: %s" % exc)
        grid = None
    cfg["slot_grid"] = tuple(grid or cfg.get("slot_grid") or (cfg["slot_s"], 0, cfg["slot_s"]))
    return asyncio.create_task(_run(client, cfg, book, on_price, log, on_time, adopt))


async def _run(client, cfg, book, on_price, log, on_time, adopt):
    observer = None
    try:
        while True:  # the clock first: every other request's timestamp needs it
            try:
                if client.sock is None:
                    client.open()
                hub_ms = await client.sync_time()
                break
            except (coap.CoapError, OSError) as exc:
                log("coap: %s:%d: %s" % (client.where + (exc,)))
                await asyncio.sleep(_RETRY_S)
        log("coap: clock set from the hub (ours was %d ms off)" % client.offset_ms)
        if on_time is not None:
            on_time(hub_ms)

        def price(payload):
            try:
                heard = json.loads(payload)
                value, grid = heard.get("price"), heard.get("grid")
            except (ValueError, AttributeError):
                log("coap: /price is not JSON")
                return
            if isinstance(value, (int, float)) and value > 0:
                on_price(value)
            if grid is not None:
                take_grid(cfg, grid, log)

        observer = asyncio.create_task(client.observe("price", price))
        while True:
            try:
                code, payload = await client.get("contracts/%d" % cfg["device_id"])
                if code != coap.CONTENT:
                    raise coap.CoapError("GET /contracts: %s %s" % (coap.code_str(code), payload))
                hub, omitted = coap.decode_contracts(payload)
                now_s = client.now_ms() // 1000
                found = reconcile(book, hub, now_s, omitted, adopt, log)
                differ = len(found["state"]) + len(found["terms"])
                log("coap: reconciled %d contracts with the hub: %d agree, %d adopted, "
                    "%d missing, %d unknown, %d differ"
                    % (len(hub), found["agree"], len(found["adopted"]), len(found["missing"]),
                       len(found["unknown"]), differ))  # fmt: skip
                del hub, found, payload
            except (coap.CoapError, OSError, ValueError) as exc:
                log("coap: reconcile: %s" % exc)
            await asyncio.sleep(cfg.get("coap_reconcile_s", 900))
    finally:
        if observer is not None:
            observer.cancel()
        client.close()
