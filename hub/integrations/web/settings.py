"""[web] in hub.toml: its defaults, their check at load, and the control token."""

import os
import stat
from pathlib import Path

DEFAULTS = {
    "host": "127.0.0.1",  # loopback: only this machine; "0.0.0.0" for the LAN
    "port": 8080,  # 0: any free port (tests)
    "token_file": None,  # a file holding the control token (0600); None: read-only page
    "experiment_plot": None,  # a .png or .svg (`gridbid experiment --plot F`), served at /plot
    "experiment_json": None,  # `gridbid experiment --json F`: its table, at /api/experiment
    "ws_queue": 256,  # events queued per WebSocket client before it is dropped as too slow
    "max_page": 500,  # the largest `limit` the REST API accepts
    # Connections (guards.Connections): at most this many open (pages, /ws, API
    # clients; fewer if the hub's open-files limit is low), so many from one address,
    # and a request's headers must come within request_s.
    "max_connections": 1024,
    "max_per_address": 64,
    "request_s": 10,
}
MIN_TOKEN = 16  # characters: a short token is guessable over a LAN


class ListenError(RuntimeError):
    """start(): the page's address cannot be listened on (a busy port, an unknown host)."""


def check(settings, base, where):
    """Settings merged with DEFAULTS -> checked, paths resolved against `base`."""
    host = settings["host"]
    if not isinstance(host, str) or not host:
        raise ValueError('%s: host must be an address such as "127.0.0.1"' % where)
    for name, low, high in (("port", 0, 65535), ("ws_queue", 1, 100_000),
                            ("max_page", 1, 100_000), ("max_connections", 8, 100_000),
                            ("max_per_address", 1, 100_000), ("request_s", 1, 300)):  # fmt: skip
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError("%s: %s must be a whole number %d..%d" % (where, name, low, high))
    out = dict(settings)
    if settings["token_file"] is not None:
        if not isinstance(settings["token_file"], str):
            raise ValueError("%s: token_file must be a path" % where)
        out["token_file"] = str(Path(base) / settings["token_file"])
        read_token(out["token_file"], where)  # refuse now, with one line, not at first POST
    if settings["experiment_plot"] is not None:
        plot = settings["experiment_plot"]
        if not isinstance(plot, str) or Path(plot).suffix.lower() not in (".png", ".svg"):
            raise ValueError("%s: experiment_plot must name a .png or .svg file" % where)
        out["experiment_plot"] = str(Path(base) / plot)  # it may not exist yet
    if settings["experiment_json"] is not None:
        found = settings["experiment_json"]
        if not isinstance(found, str) or Path(found).suffix.lower() != ".json":
            raise ValueError("%s: experiment_json must name a .json file" % where)
        out["experiment_json"] = str(Path(base) / found)  # it may not exist yet
    return out


def read_token(path, where="web"):
    """The control token from its file (surrounding whitespace dropped). ValueError if the
    file is missing, readable by others, or holds too short a token."""
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            token = f.read().strip()
    except FileNotFoundError:
        raise ValueError("%s: no token_file %s" % (where, path)) from None
    except OSError as exc:
        raise ValueError(
            "%s: cannot read token_file %s: %s" % (where, path, exc.strerror)
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError("%s: token_file %s is readable by others: chmod 600 it" % (where, path))
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise ValueError(
            "%s: token_file %s must hold one token of %d+ characters, no spaces "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            % (where, path, MIN_TOKEN)
        )
    return token
