"""The hub's web status page: [web] in hub.toml (hub/config/hub_toml.py INTEGRATIONS).

Served by the hub process itself, on its event loop (uvicorn as a task), so it sees
every event as it happens and needs no second process on the Pi:

    /              the page (hub/integrations/web/static: plain HTML, one JS, one CSS; no CDN)
    /ws            every hub event as JSON, live (hub/integrations/web/stream.py)
    /api/...       history from the store, paged and filtered (hub/integrations/web/api.py);
                   the schema is /openapi.json
    /api/platform  the platform layer's certificates, proposals and rewards, read from
                   its tables in the store (hub/integrations/web/platform.py); {"enabled": false}
                   when [platform] never ran
    /plot          the experiment's plot (experiment_plot), when the file exists

Reads go through a read-only SQLite connection in one worker thread
(hub/integrations/web/queries.py): a slow page never stalls the market, and the page cannot
write the store. The one write, POST /api/controls, runs on the hub's loop (as
every store write does) and needs the token in token_file: without one the page
is read-only. The token file is a secret like the keys file: mode 0600, or the
hub refuses to start.
"""

from hub.integrations.web.settings import DEFAULTS, ListenError, check, read_token

__all__ = ["DEFAULTS", "ListenError", "check", "read_token", "start"]


async def start(hub, settings):
    """Serve the page on the hub's loop. -> the WebServer (await .close() to stop it)."""
    from hub.integrations.web.server import WebServer

    server = WebServer(hub, settings)
    await server.start()
    return server
