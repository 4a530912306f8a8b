"""CoAP for the batteries (RFC 7252 over UDP, aiocoap): the hub's [coap] integration.

Resources:

    /price                 observable (RFC 7641): {"price": c/kWh, "slot": name, "at": unix s,
                           "grid": [before s, from unix s, after s]} (JSON, 50): the price
                           signal and the market's slot grid (a governed slot_s change,
                           hub/controls.py); a notification on each "price" event and
                           grid change, and again every max_age_s / 2 so that a silent
                           hub shows as one. A device it answers has heard the grid
                           (hub.grid.heard: the hub trades it past a change)
    /contracts/<device>    the device's binding contracts (Confirmed, Active) and those
                           that ended within recent_s, at most max_contracts, as the
                           compact list of protocol/coap.py (42); a device reads its own
    /time                  the hub's clock, unix ms as text (0): a board without an RTC
                           sets its clock from it
    /.well-known/core      link format (RFC 6690), open: the list of resources is not secret

Every request but /.well-known/core carries the AUTH option (protocol/coap.py): the
device's key id (= its device id), a timestamp and a nonce, tagged with the battery's
CoAP pair key (derived from the hub's master secret: protocol/auth.py, LABEL_COAP).
Refused with 4.01 and a one-line reason as payload: no or malformed option, an
aggregator's key id (no device), bad tag (a key id no battery was given: the same),
timestamp more than replay_window_s from the hub's clock, a (timestamp, nonce) already
seen. /time skips the last two: a board without a clock cannot make a fresh timestamp,
and the signed answer is bound to its nonce, so an old request replayed gains nothing.
Every answer to an authenticated request is signed with the same key, bound to the
request, so the device can trust what it reconciles its contracts from. Keys never
appear in responses or logs.

Settings ([coap] in hub.toml): DEFAULTS below. `async start(hub, settings)` returns the
running server; `await server.close()` stops it.
"""

import asyncio
import json
import logging
import socket
import time

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.util.linkformat import Link

from hub.controls import GRID
from hub.integrations import coap_bounds
from protocol import coap
from protocol.contract import MarketContract
from transport import tasks
from transport.settings import check as checked

log = logging.getLogger(__name__)

# aiocoap's numbers, as ints (what is signed, and what .well-known/core lists)
TEXT, OCTETS = int(ContentFormat.TEXT), int(ContentFormat.OCTETSTREAM)
JSON = int(ContentFormat.JSON)
FORBIDDEN, NOT_FOUND = int(aiocoap.FORBIDDEN), int(aiocoap.NOT_FOUND)

DEFAULTS = {
    "bind": "127.0.0.1",  # this machine only; the LAN address (or "0.0.0.0") for batteries
    "port": 5683,  # CoAP's port
    "max_age_s": 60,  # /price notifications' Max-Age: a device re-registers after it
    "replay_window_s": 30,  # how far a request's timestamp may be from the hub's clock
    "max_contracts": 8,  # per /contracts answer (a list stays in one datagram)
    "recent_s": 3600,  # ended contracts are listed this long after their window
}
RULES = (
    ("bind", "ip", 0, 0),
    ("port", "whole", 1, 65535),
    ("max_age_s", "whole", 1, 86400),
    ("replay_window_s", "number", 1, 3600),
    ("max_contracts", "whole", 1, 12),
    ("recent_s", "number", 0, 7 * 86400),
)
BINDING = ("Confirmed", "Active")
ENDED = (
    "TerminatedByAtn", "TerminatedByScada", "CompletedUnknownOutcome", "CompletedSuccess",
    "CompletedFailureByScada", "CompletedFailureByAtn",
)  # fmt: skip
_SEEN_PER_DEVICE = 64  # (timestamp, nonce) pairs remembered per device within the window
_LOG_EVERY_S = 1.0  # at most one refusal line a second (a flood must not flood the log)


def check(settings, base, where):
    """settings (merged with DEFAULTS) checked; ValueError naming the fault."""
    return checked(settings, RULES, where)


async def start(hub, settings):
    server = CoapServer(hub, settings)
    await server.start()
    return server


def now_ms():
    return time.time_ns() // 1_000_000


class Refused(Exception):
    """A request that does not authenticate: 4.01 with this reason."""


class Guard:
    """Who may ask: batteries holding their CoAP pair key, fresh and not replayed."""

    def __init__(self, keyring, not_devices, window_s):
        self.keyring = keyring
        self.not_devices = set(not_devices)  # the aggregators' key ids
        self.window_ms = int(window_s * 1000)
        self._seen = {}  # device -> ({(ts, nonce): ts}, floor ts: at or below it is refused)
        self._quiet_until = 0.0
        self._quieted = 0

    def check(self, request, path, fresh=True):
        """-> (device id, its key, the AUTH value); Refused with the reason."""
        value = _auth_value(request)
        try:
            device, ts, nonce = coap.request_auth(value)
        except coap.CoapError as exc:
            raise Refused(str(exc)) from None
        key = None if device in self.not_devices else self.keyring.get(device)
        if key is None:
            raise Refused("unknown device %d" % device)
        if not coap.request_tag_ok(key, value, coap.GET, path, bytes(request.payload)):
            raise Refused("bad tag for device %d: wrong key, or the request was altered" % device)
        if fresh:
            self._admit(device, ts, nonce)
        return device, key, value

    def _admit(self, device, ts, nonce):
        now = now_ms()
        if abs(now - ts) > self.window_ms:
            raise Refused(
                "stale timestamp: %.1f s from the hub's clock (window %d s); GET /time sets "
                "the clock" % ((ts - now) / 1000, self.window_ms // 1000)
            )
        seen, floor = self._seen.get(device, ({}, 0))
        if ts <= floor or (ts, nonce) in seen:
            raise Refused("replayed request (device %d, timestamp %d)" % (device, ts))
        for old in [k for k, t in seen.items() if t < now - self.window_ms]:
            del seen[old]  # out of the window: its timestamp alone refuses it now
        if len(seen) >= _SEEN_PER_DEVICE:  # a burst: forget the oldest, refuse up to it
            oldest = min(seen, key=seen.get)
            floor = max(floor, seen.pop(oldest))
        seen[(ts, nonce)] = ts
        self._seen[device] = (seen, floor)

    def refused(self, request, path, reason):
        now = time.monotonic()
        if now < self._quiet_until:
            self._quieted += 1
            return
        more = " (%d more refused in the last second)" % self._quieted if self._quieted else ""
        log.warning(
            "coap: 4.01 to %s for GET /%s: %s%s" % (request.remote.hostinfo, path, reason, more)
        )
        self._quiet_until, self._quieted = now + _LOG_EVERY_S, 0


def _auth_value(request):
    found = request.opt.get_option(coap.AUTH)
    return found[0].value if found else None


class Signed(resource.Resource):
    """A GET resource whose requests must authenticate and whose answers are signed."""

    fresh = True  # refuse stale or replayed timestamps

    def __init__(self, server, prefix):
        super().__init__()
        self.server = server
        self.prefix = prefix  # its Uri-Path (a request's path is what follows it)

    async def render_get(self, request):
        path = "/".join(self.prefix + tuple(request.opt.uri_path))
        guard = self.server.guard
        proven = getattr(request, "gridbid_auth", None)  # a notification re-renders it
        if proven is None:
            try:
                proven = guard.check(request, path, self.fresh)
            except Refused as exc:
                guard.refused(request, path, str(exc))
                return aiocoap.Message(code=aiocoap.UNAUTHORIZED, payload=str(exc).encode(),
                                       content_format=TEXT)  # fmt: skip
            request.gridbid_auth = proven
        device, key, value = proven
        code, payload, fmt = self.answer(device, tuple(request.opt.uri_path))
        hub_ms = self.server.hub_ms()
        response = aiocoap.Message(code=aiocoap.Code(code), payload=payload, content_format=fmt)
        response.opt.add_option(OptionNumber(coap.AUTH).create_option(
            value=coap.sign_response(key, value, code, path, hub_ms, payload)))  # fmt: skip
        return response

    def answer(self, device, rest):
        """-> (code, payload, content format) for an authenticated device."""
        raise NotImplementedError


class TimeResource(Signed):
    ct = TEXT
    rt = "gridbid.time"
    fresh = False

    def answer(self, device, rest):
        return coap.CONTENT, b"%d" % now_ms(), TEXT


class PriceResource(Signed, resource.ObservableResource):
    ct = JSON
    rt = "gridbid.price"

    def __init__(self, server, prefix):
        super().__init__(server, prefix)
        # The last recorded signal, so that a restarted hub answers with it at once (as
        # a battery keeps its last signal while a restarted hub's Queries carry none).
        last = server.hub.store.price_signals(limit=1)
        if last:
            self.value = {"price": last[0]["price"], "slot": last[0]["slot"], "at": last[0]["at"]}
        else:
            self.value = {"price": None, "slot": None, "at": None}

    def update(self, event):
        self.value = {"price": event["price"], "slot": event["slot"], "at": event["at"]}
        self.updated_state()

    def answer(self, device, rest):
        hub = self.server.hub
        hub.grid.heard(device)  # a notification re-renders this: sent to it too
        value = dict(self.value, grid=list(hub.grid.value))
        return coap.CONTENT, json.dumps(value, separators=(",", ":")).encode(), JSON

    async def render_get(self, request):
        response = await super().render_get(request)
        response.opt.max_age = self.server.settings["max_age_s"]
        return response


class ContractsResource(Signed, resource.PathCapable):
    ct = OCTETS
    rt = "gridbid.contracts"

    def answer(self, device, rest):
        if len(rest) != 1 or not rest[0].isdigit():
            return NOT_FOUND, b"GET /contracts/<device id>", TEXT
        if int(rest[0]) != device:
            text = "device %d may read only /contracts/%d" % (device, device)
            return FORBIDDEN, text.encode(), TEXT
        limit = self.server.settings["max_contracts"]
        rows = self.server.contracts_of(device)
        store = self.server.hub.store  # the terms as the store gives them: MarketContract JSON
        entries = [_entry(store.contract(row["id"])) for row in rows[:limit]]
        payload, _count = coap.encode_contracts(entries, limit, total=len(rows))
        return coap.CONTENT, payload, OCTETS


class CoapServer:
    def __init__(self, hub, settings):
        self.hub = hub
        self.settings = settings
        self.guard = Guard(hub.cfg["keys"].coap, [a["key_id"] for a in hub.cfg["aggregators"]],
                           settings["replay_window_s"])  # fmt: skip
        self.price = PriceResource(self, ("price",))
        self.contracts = ContractsResource(self, ("contracts",))
        site = resource.Site()
        site.add_resource(["price"], self.price)
        site.add_resource(["contracts"], self.contracts)
        site.add_resource(["time"], TimeResource(self, ("time",)))
        site.add_resource([".well-known", "core"],
                          resource.WKCResource(self.links, impl_info=None))  # fmt: skip
        self.site = site
        self.context = None
        self._last_ms = 0
        self._unsubscribe = None
        self._refresh = None

    def links(self):
        found = self.site.get_resources_as_linkheader()
        # /contracts is a prefix (PathCapable), which aiocoap does not list by itself
        found.links.append(Link("/contracts", rt=self.contracts.rt, ct=str(OCTETS)))
        return found

    async def start(self):
        s = self.settings
        try:
            _probe(s["bind"], s["port"])
            self.context = await aiocoap.Context.create_server_context(
                self.site, bind=(s["bind"], s["port"]), transports=["udp6"]
            )
            coap_bounds.bound(self.context)
        except OSError as exc:
            raise OSError(exc.errno, "[coap] cannot listen on %s:%d: %s"
                          % (s["bind"], s["port"], exc.strerror)) from None  # fmt: skip
        self._unsubscribe = self.hub.events.subscribe(self._event)
        self._refresh = tasks.keep("coap /price notifications", self._keep_fresh)
        log.info("coap: serving /price, /contracts, /time on %s:%d" % (s["bind"], s["port"]))

    async def close(self):
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if self.context is not None:
            await self.context.shutdown()
            self.context = None

    def _event(self, event):
        if event["kind"] == "price":
            self.price.update(event)
        elif event["kind"] == "control" and event["name"] == GRID:
            self.price.updated_state()  # the new grid goes out now, not with the next price

    async def _keep_fresh(self):
        """Notify within every Max-Age (RFC 7641 4.3.1): an observer that hears
        nothing for max_age_s knows the hub, or the way to it, is gone."""
        while True:
            await asyncio.sleep(self.settings["max_age_s"] / 2)
            self.price.updated_state()

    def hub_ms(self):
        """The hub's clock for a signature, strictly growing (devices take only newer)."""
        self._last_ms = max(now_ms(), self._last_ms + 1)
        return self._last_ms

    def contracts_of(self, device):
        """The store's rows of the device's binding contracts, earliest start first, then
        of those ended within recent_s, latest end first."""
        store = self.hub.store
        binding = []
        for state in BINDING:
            binding += store.contracts(state=state, device=device, limit=256)
        binding.sort(key=lambda r: (r["start"], r["id"]))
        since = time.time() - self.settings["recent_s"]
        ended = [r for r in store.contracts(device=device, limit=64)
                 if r["state"] in ENDED and r["start"] + r["duration_s"] >= since]  # fmt: skip
        ended.sort(key=lambda r: -(r["start"] + r["duration_s"]))
        return binding + ended


def _probe(host, port):
    """OSError if the port is taken. aiocoap binds with SO_REUSEPORT, so a second hub
    would bind too, and the kernel would share the batteries' requests between both;
    a socket without it cannot bind beside any other (nor beside ours, once it runs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((host, port))


def _entry(row):
    return (MarketContract.from_json_dict(row["json"]), row["buyer"], row["confirm_id"] or 0,
            row["price"])  # fmt: skip
