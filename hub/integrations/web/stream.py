"""/ws: every hub event, as it happens, to every connected page.

hub.events calls publish() synchronously on the hub's loop for each event; it
encodes the event once and puts the text in each client's bounded queue, which
costs the market a few microseconds per client and never waits. Each client has
its own sender that writes its queue to its socket, so a slow client delays only
itself.

Slow clients: when a client's queue is full (ws_queue events it has not taken),
the client is DROPPED, not its oldest messages: its socket is closed with code
1013 ("try again later", reason "too slow") and its queue freed. A page that
silently missed events would show a wrong book; a dropped page knows it, and
app.js reconnects and reloads its views from the REST API, so it is consistent
again. `dropped` counts them (shown in /api/status).

Messages: the first is {"kind": "hello", "hub", "queue", "at"}; then each event
as hub/events.py documents it ({"id", "kind", "at", ...}). Non-finite numbers
become null (JSON has none). What clients send is read and ignored.
"""

import asyncio
import json
import math
import time

from starlette.websockets import WebSocketDisconnect

TOO_SLOW = 1013  # RFC 6455 registry: Try Again Later
GOING_AWAY = 1001


def encode(event):
    try:
        return json.dumps(event, allow_nan=False, default=str, separators=(",", ":"))
    except ValueError:  # NaN or infinity somewhere: null, as JSON cannot carry them
        return json.dumps(_finite(event), default=str, separators=(",", ":"))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# What a WebSocket that is gone raises, from starlette (WebSocketDisconnect, or a
# RuntimeError once it knows) or uvicorn (ClientDisconnected, an OSError).
GONE = (WebSocketDisconnect, RuntimeError, OSError)


async def _close(websocket, code, reason):
    try:
        # A client that reads nothing may never take the close frame: give up then
        # (uvicorn closes the socket when the handler returns).
        await asyncio.wait_for(websocket.close(code, reason), 1.0)
    except (asyncio.TimeoutError, *GONE):
        pass  # gone already, or not reading: nothing more to tell it


class Client:
    def __init__(self, size):
        self.queue = asyncio.Queue(size)
        self.sender = None
        self.too_slow = False


class Fanout:
    def __init__(self, queue_size, hub_name):
        self.queue_size = queue_size
        self.hub_name = hub_name
        self.clients = set()
        self.dropped = 0  # clients dropped for being too slow, since start
        self.sent = 0  # events published
        self.closed = False
        self.serving = 0  # handlers not yet done (their close frame not yet sent)

    def publish(self, event):
        """The hub.events listener: quick, never blocks."""
        text = encode(event)
        self.sent += 1
        for client in list(self.clients):
            try:
                client.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._drop(client)

    def _drop(self, client):
        client.too_slow = True
        self.clients.discard(client)
        self.dropped += 1
        while not client.queue.empty():  # free its memory now
            client.queue.get_nowait()
        if client.sender is not None:
            client.sender.cancel()

    async def serve(self, websocket):
        """The /ws endpoint: until the client leaves, is dropped, or the hub stops."""
        self.serving += 1
        try:
            await self._serve(websocket)
        finally:
            self.serving -= 1

    async def _serve(self, websocket):
        try:
            await websocket.accept()
        except GONE:
            return
        if self.closed:
            await _close(websocket, GOING_AWAY, "hub stopping")
            return
        client = Client(self.queue_size)
        hello = {"kind": "hello", "hub": self.hub_name, "queue": self.queue_size,
                 "at": time.time()}  # fmt: skip
        client.queue.put_nowait(encode(hello))
        client.sender = asyncio.create_task(self._send(websocket, client))
        listener = asyncio.create_task(self._listen(websocket))
        self.clients.add(client)
        try:
            await asyncio.wait({client.sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.clients.discard(client)
            for task in (client.sender, listener):
                task.cancel()
            await asyncio.gather(client.sender, listener, return_exceptions=True)
        if client.too_slow:
            await _close(websocket, TOO_SLOW, "too slow")
        elif self.closed:
            await _close(websocket, GOING_AWAY, "hub stopping")

    async def _send(self, websocket, client):
        while True:
            await websocket.send_text(await client.queue.get())

    async def _listen(self, websocket):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    def close(self):
        """The hub is stopping: every client's handler ends (closing with 1001)."""
        self.closed = True
        for client in list(self.clients):
            client.sender.cancel()
