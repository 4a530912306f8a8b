"""An aggregator's links to markets: the market API's client side.

    MarketLink   over TCP to a hub of its own (transport/market_wire.py), kept up:
                 reconnects with backoff (transport.links.BACKOFF_S), and subscribes
                 again on every connection
    LocalLink    in-process, to the Exchange of the hub hosting the aggregator; every
                 message crosses as JSON, exactly as on the wire

Both hand each message from the hub to handler(link, message) and take the
aggregator's with send(message); send raises NotConnected while the link is down.
"""

import asyncio
import json
import logging

from transport import market_wire as wire
from transport import tasks
from transport.links import BACKOFF_S  # reconnect as a link to a battery does

log = logging.getLogger(__name__)


class NotConnected(ConnectionError):
    pass


class MarketLink:
    """aggregator_id's session with the market at (host, port), keyed with its market key
    (the hub gave it: `gridbid hub admit`)."""

    trusted = False  # another company's market: its fills are checked against our bids

    def __init__(self, market, host, port, aggregator_id, key, handler):
        self.market, self.host, self.port = market, host, port
        self.aggregator_id, self._key = aggregator_id, key
        self.handler = handler
        self.connected = asyncio.Event()
        self.connections = 0
        self._writer = self._session = self._task = None

    def start(self):
        # A message its handler cannot take must not end the session for good.
        self._task = tasks.keep("market %s session" % self.market, self._run)
        return self

    def send(self, message):
        if self._session is None or self._writer.is_closing():
            raise NotConnected("no session with market %s" % self.market)
        self._writer.write(self._session.seal(message))

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()

    async def _run(self):
        delay, said = BACKOFF_S[0], None
        while True:
            try:
                reader, self._writer = await asyncio.open_connection(self.host, self.port)
                hello = wire.hello(reader, self._writer, self.aggregator_id, self._key)
                self._session, challenge = await hello
                if challenge.get("market") != self.market:
                    raise wire.WireError("it is market %r, not %r"
                                         % (challenge.get("market"), self.market))  # fmt: skip
                self.send({"type": "subscribe"})
                while True:
                    tag, body = await wire.read_frame(reader, wire.MAX_FROM_HUB)
                    message = self._session.open(tag, body)  # the hub proves itself too
                    if not self.connected.is_set():
                        self.connected.set()
                        self.connections += 1
                        delay, said = BACKOFF_S[0], None
                        log.info("market %s: connected to %s:%d", self.market, self.host,
                                 self.port)  # fmt: skip
                    self.handler(self, message)
            except asyncio.CancelledError:
                raise
            except (OSError, EOFError, asyncio.TimeoutError, wire.WireError) as exc:
                why = str(exc) or type(exc).__name__
                if why != said:  # one line per new reason, not one per retry
                    log.warning("market %s at %s:%d: %s (retrying)", self.market, self.host,
                                self.port, why)  # fmt: skip
                    said = why
            finally:
                self.connected.clear()
                self._session = None
                if self._writer is not None:
                    self._writer.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_S[1])


class LocalLink:
    """A hosted aggregator's session with its hub's Exchange, in the hub's process."""

    trusted = True  # the hub hosting it: after a restart of both, its fills are taken

    def __init__(self, exchange, aggregator_id, handler):
        self.market = exchange.market_name
        self.exchange, self.aggregator_id, self.handler = exchange, aggregator_id, handler
        self.connected = asyncio.Event()
        self._participant = None

    def start(self):
        loop = asyncio.get_running_loop()

        def deliver(message):  # later, as a socket would: the hub is never re-entered
            loop.call_soon(self.handler, self, json.loads(json.dumps(message)))

        self._participant = self.exchange.join(self.aggregator_id, deliver)
        self.connected.set()
        self.send({"type": "subscribe"})
        return self

    def send(self, message):
        if self._participant is None:
            raise NotConnected("not joined to market %s" % self.market)
        self.exchange.received(self._participant, json.loads(json.dumps(message)))

    async def close(self):
        if self._participant is not None:
            self.exchange.leave(self._participant)
            self._participant = None
        self.connected.clear()
