"""The market API on TCP: one authenticated session per connection (transport/
market_wire.py), each message handed to the Exchange (hub/market/exchange.py).

Bounded for a stranger: at most max_pending connections that have not authenticated
yet (max_per_address from one address), apart from the max_sessions authenticated ones;
a newcomer takes the place of the one waiting longest, so idle strangers lock no
aggregator out; a connection must say hello within hello_s
and authenticate with its next message within hello_s more; a frame's size is checked
before it is read; an aggregator that is not admitted gets one `refused` line and the
connection closes; nothing is parsed before its tag, and a message's weight is charged
to its aggregator before it is parsed. Refusals are logged at most once a second (with
a count of those not logged). One session per aggregator: a new one ends the old. A
session whose aggregator stops reading (the hub's buffer for it passes SEND_BUFFER) is
closed.
"""

import asyncio
import logging
import time

from hub.market.exchange import Refused
from transport import market_wire as wire
from transport.counts import Counts

log = logging.getLogger(__name__)
SEND_BUFFER = 4 * 1024 * 1024
# Why a connection was refused (/metrics label values, a fixed set): crowded (it waited
# longest among too many unauthenticated), timeout (no hello or proof in time), wire (a
# frame that breaks market_wire: size, bad tag, malformed), not_admitted (or no room).
REFUSED = ("crowded", "timeout", "wire", "not_admitted")


class MarketServer:
    def __init__(self, exchange, keys, bind, port, max_sessions=64, hello_s=5.0,
                 max_pending=16, max_per_address=4):  # fmt: skip
        self.exchange, self.keys = exchange, keys
        self.bind, self.port = bind, port
        self.max_sessions, self.hello_s = max_sessions, hello_s
        self.max_pending, self.max_per_address = max_pending, max_per_address
        self.connections = set()  # every open connection's writer
        self.pending = {}  # writer -> its address, not authenticated yet, oldest first
        self._sessions = set()  # the tasks serving them
        self._server = None
        self._quiet = [0.0, 0]  # log refusals at most once a second: [next at, not logged]
        self.frames_in = self.frames_out = 0  # on every session, for /metrics
        self.refused = Counts(REFUSED)

    async def start(self):
        self._server = await asyncio.start_server(self._serve, self.bind, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("market API on %s:%d", self.bind, self.port)
        return self

    async def close(self):
        """Stop listening, end every session (its aggregator reconnects with backoff)."""
        if self._server is not None:
            self._server.close()
            for task in list(self._sessions):
                task.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader, writer):
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else "?"
        # Room for a newcomer: the connection waiting longest goes (it had its chance; an
        # aggregator authenticates within milliseconds), first among its address's.
        same = [w for w, a in self.pending.items() if a == address]
        if len(same) >= self.max_per_address or len(self.pending) >= self.max_pending:
            oldest = same[0] if len(same) >= self.max_per_address else next(iter(self.pending))
            self._refused(oldest, "crowded", "too many connections wait to authenticate")
            oldest.close()
            self.pending.pop(oldest, None)
        self.pending[writer] = address
        self.connections.add(writer)
        self._sessions.add(asyncio.current_task())
        participant = None
        try:
            session, aggregator = await self._handshake(reader, writer)
            tag, body = await asyncio.wait_for(wire.read_frame(reader), self.hello_s)
            self.frames_in += 1
            first = session.open(tag, body)  # the aggregator's proof: it holds its key
            self.pending.pop(writer, None)
            if len(self.connections) - len(self.pending) > self.max_sessions:
                raise Refused("%d sessions already" % self.max_sessions)

            def send(message):
                if writer.is_closing():
                    return
                if writer.transport.get_write_buffer_size() > SEND_BUFFER:
                    log.warning("market: aggregator %d stopped reading: session closed",
                                aggregator)  # fmt: skip
                    writer.transport.abort()  # close() would wait to send what it won't read
                    return
                writer.write(session.seal(message))
                self.frames_out += 1

            participant = self.exchange.join(aggregator, send, writer.close)
            self.exchange.received(participant, first)
            while True:
                tag, body = await wire.read_frame(reader)
                self.frames_in += 1
                session.check(tag, body)
                if self.exchange.allow(participant, len(body)):  # its weight, before parsing
                    self.exchange.received(participant, wire.decode(body))
                else:
                    self.exchange.refuse(participant, "message", "over the rate limit (%d "
                                         "bytes: a token per 16 KiB)" % len(body))  # fmt: skip
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the aggregator hung up
        except asyncio.TimeoutError:
            self._refused(writer, "timeout", "no hello or no authentication in time")
        except wire.WireError as exc:
            self._refused(writer, "wire", str(exc))
        except Refused as exc:
            self._refused(writer, "not_admitted", str(exc))
        except asyncio.CancelledError:
            pass  # the hub stops: end quietly (asyncio logs a handler's cancellation)
        finally:
            self.pending.pop(writer, None)
            if participant is not None:
                self.exchange.leave(participant)
            self.connections.discard(writer)
            self._sessions.discard(asyncio.current_task())
            writer.close()

    async def _handshake(self, reader, writer):
        """hello -> challenge. -> (the keyed Session, the aggregator's id)."""
        _tag, body = await asyncio.wait_for(wire.read_frame(reader), self.hello_s)
        self.frames_in += 1
        hello = wire.decode(body)
        aggregator = hello.get("aggregator")
        if hello["type"] != "hello" or hello.get("v") != wire.VERSION:
            raise wire.WireError("expected a hello of version %d" % wire.VERSION)
        if isinstance(aggregator, bool) or not isinstance(aggregator, int):
            raise wire.WireError("hello names no aggregator id")
        if not 0 < aggregator < 2**32 or self.exchange.admitted(aggregator) is None:
            raise Refused("aggregator %r is not admitted to this market, or was revoked"
                          % (aggregator,))  # fmt: skip
        nonce = wire.new_nonce()
        key = wire.session_key(self.keys.market_key(aggregator), hello.get("nonce"), nonce)
        challenge = {"type": "challenge", "v": wire.VERSION, "nonce": nonce,
                     "market": self.exchange.market_name}  # fmt: skip
        writer.write(wire.encode(challenge))
        self.frames_out += 1
        await writer.drain()
        return wire.Session(key, wire.TO_AGGREGATOR, wire.TO_HUB), aggregator

    def _refused(self, writer, reason, why):
        """Tell the peer why (untagged: it may hold no key), count it under reason (one
        of REFUSED), and log it, rate-limited."""
        self.refused.add(reason)
        try:
            writer.write(wire.encode({"type": "refused", "why": why}))
        except (RuntimeError, OSError, wire.WireError):
            pass
        now = time.monotonic()
        if now < self._quiet[0]:
            self._quiet[1] += 1
            return
        more = " (and %d more refused)" % self._quiet[1] if self._quiet[1] else ""
        self._quiet[:] = [now + 1.0, 0]
        peer = writer.get_extra_info("peername")
        log.warning("market: refused %s: %s%s", peer[0] if peer else "a peer", why, more)
