"""The page's guards: how many connections it keeps and for how long before a request
comes (Connections, in uvicorn's HTTP protocol), and what a request may send before it
is read (Bodies, before any route)."""

import hmac
import json
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024  # bytes of a request body (a control is ~100)


def connections(max_total, max_per_address, request_s):
    """uvicorn's HTTP protocol (its `http` setting) for one server, with these limits."""
    return type("Connections", (Connections,), {
        "max_total": max_total, "max_per_address": max_per_address,
        "request_s": request_s, "waiting": {},
    })  # fmt: skip


class Connections(H11Protocol):
    """At most max_total open connections (pages, /ws, API clients), max_per_address of
    them from one address. A connection must send a request's headers within request_s
    of connecting or of its last answer, or it is closed. When a limit is reached, a
    newcomer takes the place of the connection that has waited longest without sending
    a request, first among its own address's, as the market API does: idle or slow
    strangers (a thousand of them once took the page down, and the hub's other sockets
    with it) never lock a real page out. Refusals are logged under the command's rate
    limit (gridbid/logs.py)."""

    max_total, max_per_address, request_s = 1024, 64, 10.0
    waiting = {}  # connections with no request yet, oldest first: set per server

    def connection_made(self, transport):
        super().connection_made(transport)  # one of self.connections from here
        self._deadline = None
        address = self.client[0] if self.client else None
        same = {c for c in self.connections if (getattr(c, "client", None) or [None])[0] == address}
        for crowd, limit in ((same, self.max_per_address), (self.connections, self.max_total)):
            if len(crowd) > limit and not self._make_room(crowd):
                log.warning("web: refused a connection: %d open already", limit)
                transport.abort()  # every one is busy: the newcomer tries again later
                return
        self._wait()

    def _make_room(self, crowd):
        """Close the connection of crowd that has waited longest for its request."""
        oldest = next((c for c in self.waiting if c in crowd), None)
        if oldest is None:
            return False
        oldest.forget()
        oldest.transport.abort()
        self.connections.discard(oldest)  # now, not when its loss is reported
        crowd.discard(oldest)
        return True

    def _wait(self):
        """Until the next request's headers are in: at most request_s."""
        self.waiting[self] = True
        self._deadline = self.loop.call_later(self.request_s, self._too_slow)

    def forget(self):
        self.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self):
        self._deadline = None
        self.forget()
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self):
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are in
            self.forget()

    def handle_websocket_upgrade(self, event):
        self.forget()  # the socket is /ws's now (stream.py bounds what it queues)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait()  # keep-alive: the next request comes within request_s too

    def connection_lost(self, exc):
        self.forget()
        super().connection_lost(exc)


class Bodies:
    """Pure ASGI, before the app reads a byte of a body: a write (POST) without the token
    is refused on its headers alone (a flood of big unauthenticated bodies costs reading
    none of them), and a body over MAX_BODY is refused (413) before it is kept. uvicorn
    (h11) already bounds the request line and headers."""

    def __init__(self, app, web):
        self.app, self.web = app, web

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        token = self.web.token
        if token is None:
            return await _refuse(send, 403, "this page is read-only: its hub has no [web] "
                                 "token_file")  # fmt: skip
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token.encode()):
            return await _refuse(send, 401, "a valid token is needed (Authorization: Bearer "
                                 "<token>)", [(b"www-authenticate", b"Bearer")])  # fmt: skip
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = MAX_BODY + 1
        if declared > MAX_BODY:
            return await _refuse(send, 413, "a body of at most %d bytes" % MAX_BODY)
        body, more = b"", True
        while more:  # chunked or not, never more than MAX_BODY kept
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                return await _refuse(send, 413, "a body of at most %d bytes" % MAX_BODY)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _refuse(send, status, why, headers=()):
    payload = json.dumps({"error": why, "detail": why}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
