"""The web server's life on the hub's event loop: uvicorn as a task, the event
fan-out subscribed to hub.events, the read-only store reader; close() ends all three."""

import asyncio
import contextlib
import logging
import resource
import socket

import uvicorn

from hub.integrations.web import api, guards, metrics
from hub.integrations.web.settings import ListenError, read_token
from hub.integrations.web.stream import Fanout
from hub.store.views import Reader
from transport import tasks

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: Ctrl-C belongs to the hub (and the demo),
    which stops and then closes us; uvicorn's own handler would stop only the page."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Cache:
    """Figures over the whole history (totals, per aggregator) scan every bid layer:
    computed again only after an event that changes them, not at every page load."""

    CHANGES = ("bid", "clearing")

    def __init__(self, reader):
        self.reader = reader
        self.values = {}
        self.generation = 0

    def on_event(self, event):
        if event["kind"] in self.CHANGES:
            self.generation += 1
            self.values.clear()

    async def __call__(self, fn):
        if fn not in self.values:
            generation = self.generation
            value = await self.reader(fn)
            if generation != self.generation:  # changed meanwhile: good for this answer only
                return value
            self.values[fn] = value
        return self.values[fn]


class WebServer:
    def __init__(self, hub, settings):
        self.hub = hub
        self.settings = settings
        # Read once at start: a token changed later needs a restart (as keys do).
        self.token = read_token(settings["token_file"]) if settings["token_file"] else None
        self.reader = Reader(hub.cfg["store"])
        self.cache = Cache(self.reader)
        self.fanout = Fanout(settings["ws_queue"], hub.cfg["name"])
        self.app = api.make_app(self)
        if settings["metrics"]:
            metrics.add_route(self.app, self)  # [web] metrics = false: no /metrics
        self.url = None
        self._unsubscribe = []
        self._task = None
        self._server = None

    async def start(self):
        s = self.settings
        sock = _bind(s["host"], s["port"])
        host, port = sock.getsockname()[:2]
        most = _connections(s["max_connections"])
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off",
            http=guards.connections(most, min(most, s["max_per_address"]), s["request_s"]),
            log_config=None,  # its records go through the command's handler and rate limit
            ws_per_message_deflate=False,  # the same event to 500 pages: no per-page zlib
            ws_max_size=64 * 1024,  # pages send nothing; refuse big frames early
            timeout_graceful_shutdown=2, server_header=False,
        )  # fmt: skip
        self._server = _Server(config)
        self._unsubscribe = [self.hub.events.subscribe(f)
                             for f in (self.cache.on_event, self.fanout.publish)]  # fmt: skip
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():  # it failed: say why, with the hub's log
                await self._task
                raise RuntimeError("the web server stopped at start-up")
            await asyncio.sleep(0.01)
        # A page that dies stops the hub with one line (systemd restarts it): never a hub
        # that looks alive with no page.
        tasks.watch(self._task, "web server", self.hub.vital.fail)
        shown = "[%s]" % host if ":" in host else host
        self.url = "http://%s:%d/" % (shown, port)
        log.info("status page: %s%s" % (self.url, "" if self.token else " (read-only)"))
        return self

    async def close(self):
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.fanout.close()
        if self._task is not None:
            # Each client's handler closes it with 1001 first (going away: the page comes
            # back later); the server's own shutdown would close the rest with 1012.
            for _ in range(50):
                if not self.fanout.serving:
                    break
                await asyncio.sleep(0.01)
            self._server.should_exit = True
            done, _ = await asyncio.wait({self._task}, timeout=1.5)
            if not done:
                # A client that reads nothing keeps its socket open while uvicorn waits
                # for it to drain: stop waiting and cut such sockets (the hub is stopping).
                self._server.force_exit = True
                for connection in list(self._server.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if transport is not None:
                        transport.abort()
                done, _ = await asyncio.wait({self._task}, timeout=3)
            if not done:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.reader.close()


def _connections(wanted):
    """max_connections, or fewer when the process may not open that many files: a page
    that takes every file would starve the batteries' links and the store (the hub
    raises its soft limit to the hard one at start, gridbid/hub.py)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or wanted <= soft // 4:
        return wanted
    log.warning("web: at most %d connections: the open-files limit is %d (LimitNOFILE)",
                soft // 4, soft)  # fmt: skip
    return max(8, soft // 4)


def _bind(host, port):
    """The listening socket, bound here so a busy port is a clear error (uvicorn would
    exit the process instead)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError("web: cannot listen on %s:%d: %s" % (host, port, exc)) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # 500 pages connecting at once must not be refused
    except OSError as exc:
        sock.close()
        raise ListenError(
            "web: cannot listen on %s:%d: %s" % (host, port, exc.strerror or exc)
        ) from None
    sock.setblocking(False)
    return sock
