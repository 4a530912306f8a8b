"""The page's guard before any route: what a request may send before it is read."""

import hmac
import json

MAX_BODY = 16 * 1024  # bytes of a request body (a control is ~100)


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
