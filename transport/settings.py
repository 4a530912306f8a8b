"""Settings checked by table: every file of settings that is not a battery's (hub.toml and
its integrations' sections, aggregator.toml) states each setting's kind and range once,

    RULES = (("port", "whole", 1, 65535), ("poll_s", "number", 0.1, 3600), ...)

and check() refuses the first value that does not fit, with one line that names the
setting, what it must be and what it was. A value is checked when the file is loaded,
never when it first reaches a task (TOML allows inf and nan: `x = inf` is a float).

Kinds ("kind?" also takes None, a setting left unset; low, high bound a number's value,
a text's length):
    whole      an int (a bool is not a number): ports, counts, whole seconds
    number     an int or float, finite
    flag       true or false
    text       a string
    host       a host name or an IP address
    ip         an IP address (v4 or v6)
    ipv4       an IPv4 address (where the hub joins the group)
    multicast  an IPv4 multicast group address
    path       a string; its folder (relative to the file's) must exist. check() returns
               the settings with each path resolved against `base`
    later      a path to a file made later (its folder too, maybe): a string, resolved
"""

import ipaddress
import math
import re
from pathlib import Path

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"  # _: container names
_HOST = re.compile(r"%s(\.%s)*" % (_LABEL, _LABEL))  # a DNS name (fullmatch)
_SHOWN = 40  # characters of a bad value in the line that refuses it


def check(settings, rules, where, base=None, error=ValueError, prefix=""):
    """settings (a dict, defaults filled in) -> a copy with paths resolved; `error` names
    the first setting of `rules` whose value does not fit, as "<where>: <prefix><name> ..."."""
    out = dict(settings)
    for name, kind, low, high in rules:
        value = settings[name]
        if value is None and kind.endswith("?"):
            continue
        why = _fault(value, kind.rstrip("?"), low, high, base)
        if why:
            unset = ", if set," if kind.endswith("?") else ""
            raise error("%s: %s%s%s must be %s, not %s"
                        % (where, prefix, name, unset, why, shown(value)))  # fmt: skip
        if kind.rstrip("?") in ("path", "later"):
            out[name] = str(Path(base or ".") / value)
    return out


def shown(value):
    """A bad value as a line shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def number(value, low=-math.inf, high=math.inf):
    """A finite int or float (not a bool) in low..high (an int of any size: no float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (isinstance(value, int) or math.isfinite(value)) and low <= value <= high


def _fault(value, kind, low, high, base):
    """What value must be, or None when it is."""
    low, high = _bound(low), _bound(high)
    if kind == "whole":
        ok = not isinstance(value, bool) and isinstance(value, int) and low <= value <= high
        return None if ok else "a whole number %s..%s" % (low, high)
    if kind == "number":
        return None if number(value, low, high) else "a finite number %s..%s" % (low, high)
    if kind == "flag":
        return None if isinstance(value, bool) else "true or false"
    if kind == "text":
        ok = isinstance(value, str) and low <= len(value) <= high
        return None if ok else "a string of %s..%s characters" % (low, high)
    if kind in ("path", "later"):
        if not isinstance(value, str) or not value or "\x00" in value:
            return "a file path"
        if kind == "later":
            return None
        folder = (Path(base or ".") / value).parent
        return (
            None if folder.is_dir() else "a path in an existing folder (no such folder %s)" % folder
        )
    if kind == "host":
        if isinstance(value, str) and _address(value) is not None:
            return None
        ok = isinstance(value, str) and len(value) <= 253 and _HOST.fullmatch(value)
        return None if ok else "a host name or an IP address"
    found = _address(value)
    if kind == "ip":
        return None if found is not None else "an IP address"
    if kind == "ipv4":
        return None if found is not None and found.version == 4 else "an IPv4 address"
    if kind == "multicast":
        ok = found is not None and found.version == 4 and found.is_multicast
        return None if ok else "an IPv4 multicast group address (224.0.0.0/4)"
    raise AssertionError("unknown kind of setting %r" % kind)


def _bound(x):
    """A range's end as the line shows it: 100000, not 100000.0; 0.1 as 0.1."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _address(value):
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        return None
