"""[mqtt] in hub.toml: its defaults, their check at load, and the broker's credentials
file. The bridge itself is bridge.py."""

import json
import os
import re
import stat

from transport.settings import check as checked

DEFAULTS = {
    "host": "localhost",
    "port": None,  # None: 8883 with tls_ca, else 1883
    "client_id": None,  # None: gridbid-<hub name>
    "topic_prefix": "gridbid",
    "discovery_prefix": "homeassistant",  # "": no Home Assistant discovery
    "currency": "EUR",  # what the market's cents are of: Home Assistant's price unit
    "tls_ca": None,  # the CA file that signed the broker's certificate: TLS on
    "tls_cert": None,  # a client certificate (and tls_key), when the broker asks for one
    "tls_key": None,
    "credentials_file": None,  # JSON {"username", "password"}, mode 0600
    "qos": 1,
    "keepalive": 30,
    "outbox": None,  # None: gridbid-mqtt-outbox.sqlite next to the hub's store
    # Events in flight (sent, PUBACK not in yet), at most the broker's Receive Maximum.
    "window": 100,
    "reconnect_min_s": 1.0,  # the wait before reconnecting doubles from min to max
    "reconnect_max_s": 30.0,
}
OUTBOX_NAME = "gridbid-mqtt-outbox.sqlite"


RULES = (
    ("host", "host", 0, 0),
    ("port", "whole", 1, 65535),
    ("client_id", "text?", 1, 256),
    ("keepalive", "whole", 5, 65535),
    ("window", "whole", 1, 65535),
    ("reconnect_min_s", "number", 0.01, 3600),
    ("reconnect_max_s", "number", 0.01, 3600),
    ("topic_prefix", "text", 1, 200),
    ("discovery_prefix", "text", 0, 200),
    ("currency", "text", 1, 8),
    ("tls_ca", "path?", 0, 0),
    ("tls_cert", "path?", 0, 0),
    ("tls_key", "path?", 0, 0),
    ("credentials_file", "path?", 0, 0),
    ("outbox", "path?", 0, 0),
)


def check(settings, base, where):
    s = dict(settings)
    if s["port"] is None:
        s["port"] = 8883 if s["tls_ca"] else 1883
    s = checked(s, RULES, where, base)
    if s["qos"] not in (1, 2) or isinstance(s["qos"], bool):
        raise ValueError("%s: qos must be 1 or 2 (QoS 0 gives no PUBACK: events would be lost)"
                         % where)  # fmt: skip
    if s["reconnect_min_s"] > s["reconnect_max_s"]:
        raise ValueError("%s: reconnect_min_s must not be above reconnect_max_s" % where)
    for name in ("topic_prefix", "discovery_prefix"):
        if re.search(r"[+#\x00]|^/|/$|//", s[name]):
            raise ValueError("%s: %s must be topic levels without + # or empty levels, not %r"
                             % (where, name, s[name]))  # fmt: skip
    for name in ("tls_ca", "tls_cert", "tls_key"):
        if s[name] is not None and not os.access(s[name], os.R_OK):
            raise ValueError("%s: %s %s cannot be read" % (where, name, s[name]))
    if (s["tls_cert"] is None) != (s["tls_key"] is None):
        raise ValueError("%s: tls_cert and tls_key go together" % where)
    if s["tls_cert"] is not None and s["tls_ca"] is None:
        raise ValueError("%s: a client certificate needs TLS: set tls_ca" % where)
    if s["credentials_file"] is not None:
        credentials(s["credentials_file"], where)  # fail at start-up, not at connect
    return s


def credentials(path, where="mqtt"):
    """(username, password) from the credentials file: JSON {"username", "password"},
    mode 0600 like an ssh key. Errors name the file, never its content."""
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError("%s: cannot read credentials_file %s: %s"
                         % (where, path, exc.strerror)) from None  # fmt: skip
    except ValueError:
        raise ValueError("%s: credentials_file %s is not valid JSON" % (where, path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError("%s: credentials_file %s is readable by others: chmod 600 it"
                         % (where, path))  # fmt: skip
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) and data[k] for k in ("username", "password")
    ):
        raise ValueError('%s: credentials_file %s must be {"username": "...", "password": "..."}'
                         % (where, path))  # fmt: skip
    return data["username"], data["password"]
