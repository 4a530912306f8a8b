"""[web] in hub.toml: its defaults, their check at load, and the control token."""

import os
import stat
from pathlib import Path

from transport.settings import check as checked

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
    "metrics": True,  # GET /metrics for Prometheus (hub/integrations/web/metrics.py)
}
RULES = (
    ("host", "host", 0, 0),
    ("port", "whole", 0, 65535),
    ("token_file", "path?", 0, 0),
    ("experiment_plot", "later?", 0, 0),  # written by `gridbid experiment`, maybe later
    ("experiment_json", "later?", 0, 0),
    ("ws_queue", "whole", 1, 100_000),
    ("max_page", "whole", 1, 100_000),
    ("max_connections", "whole", 8, 100_000),
    ("max_per_address", "whole", 1, 100_000),
    ("request_s", "number", 1, 300),
    ("metrics", "flag", 0, 0),
)
MIN_TOKEN = 16  # characters: a short token is guessable over a LAN


class ListenError(RuntimeError):
    """start(): the page's address cannot be listened on (a busy port, an unknown host)."""


def check(settings, base, where):
    """Settings merged with DEFAULTS -> checked, paths resolved against `base`."""
    out = checked(settings, RULES, where, base)
    if out["token_file"] is not None:
        read_token(out["token_file"], where)  # refuse now, with one line, not at first POST
    for name, kinds in (("experiment_plot", (".png", ".svg")), ("experiment_json", (".json",))):
        if out[name] is not None and Path(out[name]).suffix.lower() not in kinds:
            raise ValueError("%s: %s must name a %s file" % (where, name, " or ".join(kinds)))
    return out  # the plot and the table may not exist yet


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
