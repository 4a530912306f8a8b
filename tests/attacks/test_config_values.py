"""Issue 17, row 10: bad hub.toml, keys-file, identity and aggregator.toml values.

Every value is checked when the file is loaded: the real loader (hub_toml.load,
aggregator.config.load) reads a real file and refuses it with ONE line (ConfigError)
that names the setting; `gridbid hub run` turns it into that line and exit code 2, never
a traceback, and no value reaches a task that it could crash later.

Before the fix (verified with the source files stashed) 142 of these 580 cases failed:
119 hub.toml values, 16 aggregator.toml values, 3 keys files and 4 of the `hub run`
processes. `hub run` ended with a traceback for store = 5 (TypeError), group_addr =
"not-an-ip" (OSError from inet_aton) and k = 0 (ValueError from the price signal), and
ran with `value = inf` in an [[aggregator]] block (it crashed at the first offer: a
systemd restart loop); inf passed every `x >= 0` check, a bool passed as a number, a
path into a missing folder failed only when the file was opened. The keys file
without a group key was already one line at this commit.
"""

import json
import math
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from helpers.processes import Gridbid

from aggregator import config as aggregator_config
from aggregator import identity, wallet
from hub.config import hub_toml, keys_file
from hub.integrations import coap, web
from hub.integrations import platform as platform_settings
from hub.integrations import settlement as settlement_settings
from hub.integrations.mqtt import settings as mqtt
from transport import secret_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "hub" / "hub.example.toml"
M = "ab" * 32  # a well-formed 32-byte key, hex
INF, NAN = math.inf, math.nan

# (section, setting, bad value). "aggregator" is the first [[aggregator]] block; the
# platform's incentives are one setting (a table).
HUB_TOML = [
    *[("hub", "name", v) for v in (7, "", "a.b", "hub one", "x" * 81, "x" * 76, "a/+", True)],
    *[("hub", "key_id", v) for v in (-1, 2**32, 1.5, "0", 1)],  # 1: an aggregator's
    *[("hub", "store", v) for v in (5, "", "nodir/x.sqlite", ["a"], False)],
    *[("hub", "keys_file", v) for v in (5, "", "nodir/k.json")],
    *[("hub", "group_addr", v) for v in ("not-an-ip", "10.0.0.1", "ff02::1", 5, "239.1.1.1 ")],
    *[("hub", "group_port", v) for v in (0, 65536, "47400", 1.5)],
    *[("hub", "interface", v) for v in ("nope", "::1", 5, "eth0", "")],
    *[("hub", "device_port", v) for v in (0, 70000, "x")],
    *[("hub", "slot_s", v) for v in (8.5, 0, 1, 86401, "900", -900)],
    *[("hub", "gate_s", v) for v in (2.5, 0, 900, -1, "300")],
    *[("hub", "discovery_s", v) for v in (-1, 601, "3", -(10**400))],
    *[("hub", "answer_s", v) for v in (0, 61, "1")],
    *[("hub", "bind_timeout_s", v) for v in (0, 0.05, 61, "2")],
    *[("hub", "market_bind", v) for v in ("nope", 5, "", "localhost")],
    *[("hub", "market_port", v) for v in (-1, 65536, "47410", 1.5)],
    *[("hub", "min_aggregator_reputation", v) for v in (-0.1, 1.5, "0.5")],
    *[("hub", "min_aggregators", v) for v in (-1, 1001, 1.5, "2")],
    *[("hub", "p_balance", v) for v in (-1, 1e6, "16", 3.0, 10**30)],  # 3: 3 - p_con < 0
    *[("hub", "p_con", v) for v in (-1, 1e6, 20.0)],
    *[("hub", "k", v) for v in (0, -1, 1001, "1")],
    *[("hub", "telemetry_raw_h", v) for v in (0, 1.5, "6", 24 * 367, 49)],  # 49 > a day's
    *[("hub", "telemetry_minutes_d", v) for v in (0, 367, 0.5, "2")],
    *[("hub", "disk_budget_mb", v) for v in (-1, 1.5, "100", 10**10)],
    *[("aggregator", "key_id", v) for v in (0, -1, 2**32, "1", 1.5)],
    *[("aggregator", "name", v) for v in (5, "", "x" * 65)],
    *[("aggregator", "identity", v) for v in (5, "nodir/a.json", "")],
    *[("aggregator", "strategy", v) for v in (5, "", "nosuch", "os:path", "nosuchmod:X")],
    *[("aggregator", "value", v) for v in (-1, 1e6, "20", 99_999.0)],  # + spread > max
    *[("aggregator", "spread", v) for v in (-1, 1e6)],
    *[("aggregator", "margin", v) for v in (-1, "1")],
    *[("aggregator", "bidders", v) for v in (0, 1001, 1.5, "3")],
    *[("aggregator", "price", v) for v in (-1, 1e6, "18")],
    *[("aggregator", "budget", v) for v in (-1, 1e13, "x")],
    *[("aggregator", "capacity", v) for v in (-1, 1e7)],
    *[("aggregator", "max_kw", v) for v in (0, -5, 1001)],
    *[("aggregator", "options", v) for v in (5, "x", [1])],
    *[("aggregator", "seed", v) for v in (1.5, [1], {"a": 1})],
    *[("mqtt", "host", v) for v in ("", 5, "bad host!", "a..b")],
    *[("mqtt", "port", v) for v in (0, 65536, "1883")],
    *[("mqtt", "client_id", v) for v in ("", 5)],
    *[("mqtt", "topic_prefix", v) for v in ("", "a/+", "/a", 5)],
    *[("mqtt", "discovery_prefix", v) for v in ("a#", 5)],
    *[("mqtt", "currency", v) for v in ("", 5, "x" * 9)],
    *[("mqtt", "tls_ca", v) for v in (5, "missing.crt")],
    *[("mqtt", "tls_cert", v) for v in (5, "hub.toml")],  # without tls_key
    *[("mqtt", "tls_key", v) for v in (5, "nodir/k.key")],
    *[("mqtt", "credentials_file", v) for v in (5, "missing.json")],
    *[("mqtt", "qos", v) for v in (0, 3, "1")],
    *[("mqtt", "keepalive", v) for v in (4, 70000, 1.5)],
    *[("mqtt", "outbox", v) for v in ("nowhere/o.sqlite", 5)],
    *[("mqtt", "window", v) for v in (0, 65536)],
    *[("mqtt", "reconnect_min_s", v) for v in (0, -1, 3601, "1", 31.0)],  # 31: above max
    *[("mqtt", "reconnect_max_s", v) for v in (0, 0.5)],  # 0.5: below min
    *[("coap", "bind", v) for v in ("my-hub", 5, "")],
    *[("coap", "port", v) for v in (0, 65536, "5683")],
    *[("coap", "max_age_s", v) for v in (0, 1.5, 86401)],
    *[("coap", "replay_window_s", v) for v in (0, 3601, "30")],
    *[("coap", "max_contracts", v) for v in (0, 13)],
    *[("coap", "recent_s", v) for v in (-1, 7 * 86400 + 1)],
    *[("web", "host", v) for v in ("", 5, "bad host")],
    *[("web", "port", v) for v in (-1, 65536, "8080")],
    *[("web", "token_file", v) for v in (5, "missing")],
    *[("web", "experiment_plot", v) for v in (5, "plot.pdf", "", "a\x00.png")],
    *[("web", "experiment_json", v) for v in (5, "r.csv")],
    *[("web", "ws_queue", v) for v in (0, 100_001, 1.5)],
    *[("web", "max_page", v) for v in (0, "500")],
    *[("web", "max_connections", v) for v in (0, 7, 100_001, 1.5, "1024")],
    *[("web", "max_per_address", v) for v in (0, -1, "64", 2.5)],
    *[("web", "request_s", v) for v in (0, 301, "10")],
    *[("web", "metrics", v) for v in (1, "yes", "true")],
    *[("settlement", "backend", v) for v in (5, "ftp://x", "")],
    *[("settlement", "wallets", v) for v in (5, "", "nodir/w")],
    *[("settlement", "owners", v) for v in (5, {"x": M}, {"1": "notakey"})],
    *[("settlement", "owners_file", v) for v in (5, ["a"])],
    *[("settlement", "mint", v) for v in (5, "notakey")],
    *[("settlement", "decimals", v) for v in (-1, 19, 1.5)],
    *[("settlement", "cents_per_credit", v) for v in (0, 1.5)],
    *[("settlement", "batch_s", v) for v in (0, 1.5)],
    *[("settlement", "max_batch", v) for v in (0, "1000")],
    *[("settlement", "poll_s", v) for v in (0, -1)],
    *[("settlement", "durable_nonce", v) for v in ("yes", 1)],
    *[("settlement", "reconcile_days", v) for v in (-1, 4000)],
    *[("settlement", "fund_credits", v) for v in (-1, 1.5)],
    *[("settlement", "margin_credits", v) for v in (-1, "1000")],
    *[("settlement", "timeout_s", v) for v in (0, "10")],
    *[("platform", "keys", v) for v in (5, "", "nodir/w")],
    *[("platform", "decimals", v) for v in (-1, 19)],
    *[("platform", "currency", v) for v in (5, "")],
    *[("platform", "sources", v) for v in (5, {"x": "solar"}, {"101": "coal"}, {"0": "wind"})],
    *[("platform", "kwh_per_certificate", v) for v in (0, -1)],
    *[("platform", "gov_supply", v) for v in (0, 1.5, 2**64)],
    *[("platform", "gov_quorum", v) for v in (-1, 1.5)],
    *[("platform", "poll_s", v) for v in (0, "30")],
    *[
        ("platform", "incentives", v)
        for v in (
            5,
            {"budgett": 1},
            {"budget": -1},
            {"epoch_s": 0},
            {"coverage": 2},
            {"conservation": {"rate": -1}},
            {"liquidity": {"cap": 1.5}},
            {"band": INF},
            {"conservation": 5},
            {"demand_response": {"rate": NAN}},
            {"max_gap_s": 900},  # the store's hold rule (hub/store/telemetry.py) now
            {"epoch_s": 5400},  # not whole hours
            {"liquidity": {"rat": 1}},
            {"baseline_epochs": 0},
            {"p_balance": NAN},
        )
    ],  # fmt: skip
]
SECTIONS = {
    "hub": hub_toml.HUB_DEFAULTS,
    "aggregator": {**hub_toml.AGGREGATOR_DEFAULTS, "key_id": 1, "name": "", "identity": ""},
    "mqtt": mqtt.DEFAULTS,
    "coap": coap.DEFAULTS,
    "web": web.DEFAULTS,
    "settlement": settlement_settings.DEFAULTS,
    "platform": platform_settings.DEFAULTS,
}
# Numeric settings whose default is None (unset), or in a TOML table
NUMBERS_UNSET = {"mqtt": ["port"], "aggregator": ["price", "budget", "capacity", "max_kw"]}
# aggregator.toml ([aggregator], and a [[market]] block's host and port)
AGGREGATOR_TOML = [
    *[("aggregator", "identity", v) for v in (5, "missing.json", "nodir/a.json")],
    *[("aggregator", "store", v) for v in (5, "nodir/s.sqlite", "")],
    *[("aggregator", "bind_timeout_s", v) for v in (0, 61, "2")],
    *[("aggregator", "wallet", v) for v in (5, "missing.json")],
    *[("aggregator", "margin_credits", v) for v in (-1, "x", 1e13)],
    *[("aggregator", "value", v) for v in (-1, "22")],
    *[("aggregator", "bidders", v) for v in (0, 2.5)],
    *[("market", "port", v) for v in (0, 70000, "x", 1.5)],
    *[("market", "host", v) for v in ("bad host!", 5, "")],
    *[("market", "admission", v) for v in (5, "missing.json")],
]


def numeric(defaults, section):
    """Every numeric setting of a section: its default is a number, or it is listed."""
    found = [n for n, v in defaults.items() if type(v) in (int, float)]
    return found + NUMBERS_UNSET.get(section, [])


# inf, -inf and nan for every numeric setting (TOML allows `x = inf`), and true (a bool
# is no number).
NON_FINITE = [
    (section, name, value)
    for section, defaults in SECTIONS.items()
    for name in numeric(defaults, section)
    for value in (INF, -INF, NAN, True)
]
AGGREGATOR_NON_FINITE = [
    ("aggregator", name, value)
    for name in numeric(aggregator_config.AGGREGATOR_DEFAULTS, "aggregator")
    for value in (INF, -INF, NAN, True)
]


def dumps(data):
    """A TOML file's text from tables of tables (tomllib reads; nothing here writes):
    {"hub": {...}, "aggregator": [{...}], ...}; None values are left out."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if v != v else ("inf" if v > 0 else "-inf")
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[%s]" % ", ".join(value(x) for x in v)
        return "{%s}" % ", ".join("%s = %s" % (json.dumps(k), value(x)) for k, x in v.items())

    def table(header, items):
        return [header] + [
            "%s = %s" % (json.dumps(k), value(v)) for k, v in items.items() if v is not None
        ]

    lines = []
    for name, body in data.items():
        for one in body if isinstance(body, list) else [body]:
            lines += table("[[%s]]" % name if isinstance(body, list) else "[%s]" % name, one)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def hub_site(tmp_path_factory):
    """The example hub.toml with every integration on (settlement on LiteSVM), its keys
    file and its hosted aggregators' identities: it loads as it is."""
    folder = tmp_path_factory.mktemp("hub")
    data = tomllib.loads(EXAMPLE.read_text())
    data["settlement"] = {"backend": "litesvm", "wallets": "wallets"}
    data["platform"] = {"keys": "wallets"}
    (folder / "hub.toml").write_text(dumps(data))
    cfg = hub_toml.load(folder / "hub.toml", keys=False)
    keys_file.provision(cfg)
    assert hub_toml.load(folder / "hub.toml")["integrations"].keys() == set(SECTIONS) - {
        "hub", "aggregator"}  # fmt: skip
    return folder, data


def hub_with(hub_site, section, name, value):
    folder, data = hub_site
    data = json.loads(json.dumps(data))  # a copy
    if section == "aggregator":
        data["aggregator"][0][name] = value
    elif section == "mqtt" and name == "reconnect_max_s":
        data["mqtt"]["reconnect_min_s"] = 1.0
        data["mqtt"][name] = value
    else:
        data[section][name] = value
    path = folder / "bad.toml"
    path.write_text(dumps(data))
    return path


@pytest.mark.parametrize(
    "section, name, value", HUB_TOML + NON_FINITE, ids=lambda v: str(v)[:30]
)  # fmt: skip
def test_a_bad_hub_toml_value_is_one_line_naming_it(hub_site, section, name, value):
    path = hub_with(hub_site, section, name, value)
    assert tomllib.loads(path.read_text())  # the file itself is valid TOML
    with pytest.raises(hub_toml.ConfigError) as error:
        hub_toml.load(path)
    said = str(error.value)
    assert "\n" not in said and name in said, said
    assert said.startswith(str(path)), said


def test_every_setting_has_bad_values_and_every_number_non_finite_ones():
    named = {(s, n) for s, n, _v in HUB_TOML}
    for section, defaults in SECTIONS.items():
        missing = [n for n in defaults if (section, n) not in named]
        assert not missing, "no bad value of %s %s" % (section, missing)
    assert len(HUB_TOML + NON_FINITE) >= 300
    assert ("hub", "k", INF) in NON_FINITE and ("settlement", "poll_s", True) in NON_FINITE


@pytest.fixture
def aggregator_site(tmp_path):
    shutil.copy(ROOT / "aggregator" / "aggregator.example.toml", tmp_path / "aggregator.toml")
    identity.create(str(tmp_path / "acme.json"), 2, "acme")
    wallet.create(tmp_path / "acme-wallet.json")
    admission = aggregator_config.admission("hub", "192.0.2.1", 47410, 2, b"k" * 32)
    secret_files.write(tmp_path / "market-hub.json", admission)
    data = tomllib.loads((tmp_path / "aggregator.toml").read_text())
    assert aggregator_config.load(tmp_path / "aggregator.toml")["name"] == "acme"
    return tmp_path, data


@pytest.mark.parametrize(
    "section, name, value", AGGREGATOR_TOML + AGGREGATOR_NON_FINITE, ids=lambda v: str(v)[:30]
)  # fmt: skip
def test_a_bad_aggregator_toml_value_is_one_line_naming_it(aggregator_site, section, name, value):
    folder, data = aggregator_site
    if section == "market":
        data["market"][0][name] = value
    else:
        data["aggregator"][name] = value
    path = folder / "bad.toml"
    path.write_text(dumps(data))
    with pytest.raises(aggregator_config.ConfigError) as error:
        aggregator_config.load(path)
    said = str(error.value)
    assert "\n" not in said and name in said, said


# The keys file: (its JSON, what the line names). Read by hub_toml.load(keys=True).
KEYS = [
    ({"master": M}, "group"),  # no group key: a traceback before
    ({"master": M, "group": ""}, "group"),
    ({"master": M, "group": "zz" * 32}, "group"),
    ({"master": M, "group": "ab" * 16}, "group"),  # 16 bytes: too short
    ({"master": M, "group": "ab" * 64}, "group"),  # 64 bytes: not a key this hub made
    ({"master": M, "group": 5}, "group"),
    ({"master": M, "group": None}, "group"),
    ({"master": M, "group": [M]}, "group"),
    ({"master": M, "group": M + "\n"}, "group"),
    ({"master": M[:-1], "group": M}, "master"),
    ({"master": "0x" + M[2:], "group": M}, "master"),
    ({"master": {"a": M}, "group": M}, "master"),
    ({"master": M, "group": M, "grp": M}, "grp"),
    ({"group": M}, "master"),
    ([M, M], "JSON object"),
    ("{", "not valid JSON"),
]


@pytest.mark.parametrize("content, named", KEYS, ids=lambda v: str(v)[:30])
def test_a_bad_keys_file_is_one_line_naming_the_key(hub_site, tmp_path, content, named):
    folder, data = hub_site
    shutil.copy(folder / "hub.toml", tmp_path / "hub.toml")
    for own in folder.glob("aggregator-*.json"):
        shutil.copy(own, tmp_path / own.name)
    keys = tmp_path / "hub-keys.json"
    keys.write_text(content if isinstance(content, str) else json.dumps(content))
    os.chmod(keys, 0o600)
    with pytest.raises(hub_toml.ConfigError) as error:
        hub_toml.load(tmp_path / "hub.toml")
    said = str(error.value)
    assert "\n" not in said and named in said and "keys file" in said, said
    assert M not in said  # never a key in the line


# A hosted aggregator's identity file: (its JSON, what the line names).
IDENTITIES = [
    ({"id": 0, "name": "value", "master": M}, "id"),
    ({"id": "1", "name": "value", "master": M}, "id"),
    ({"id": True, "name": "value", "master": M}, "id"),
    ({"id": 2**32, "name": "value", "master": M}, "id"),
    ({"id": 1, "name": "", "master": M}, "name"),
    ({"id": 1, "name": 5, "master": M}, "name"),
    ({"id": 1, "name": "value", "master": "ab" * 16}, "master"),
    ({"id": 1, "name": "value", "master": None}, "master"),
    ({"id": 1, "name": "value", "master": "xyz"}, "master"),
]


@pytest.mark.parametrize("content, named", IDENTITIES, ids=lambda v: str(v)[:30])
def test_a_bad_identity_file_is_one_line_naming_it(hub_site, tmp_path, content, named):
    folder, _data = hub_site
    for name in ("hub.toml", "hub-keys.json", "aggregator-2.json", "aggregator-3.json"):
        shutil.copy(folder / name, tmp_path / name)
    secret_files.write(tmp_path / "aggregator-1.json", content)
    with pytest.raises(hub_toml.ConfigError) as error:
        hub_toml.load(tmp_path / "hub.toml")
    said = str(error.value)
    assert "\n" not in said and re.search(r"\b%s\b" % named, said), said


def test_the_documented_values_load(hub_site, tmp_path):
    """hub.example.toml with its commented-out [settlement] and [platform] blocks turned
    on loads: every value it documents is a valid one."""
    folder, _data = hub_site
    text = EXAMPLE.read_text()
    start = text.index("# [settlement]\n")
    setting = re.compile(r'(\[[a-z.]+\] *(#.*)?$|[a-z_]+ = |"[0-9]+" = )')  # a header, a setting
    shown = [line[2:] for line in text[start:].splitlines() if line.startswith("# ")]
    body = text[:start] + "\n".join(line for line in shown if setting.match(line))
    (tmp_path / "hub.toml").write_text(body + "\n")
    for name in ("hub-keys.json", "aggregator-1.json", "aggregator-2.json", "aggregator-3.json"):
        shutil.copy(folder / name, tmp_path / name)
    cfg = hub_toml.load(tmp_path / "hub.toml")
    assert set(cfg["integrations"]) == {"mqtt", "coap", "web", "settlement", "platform"}
    assert cfg["integrations"]["platform"]["incentives"]["budget"] == 10000
    assert cfg["integrations"]["platform"]["sources"] == {101: "solar"}


# Values at the edges of their ranges: still loaded (the checks are not too tight).
GOOD = [
    ("hub", "name", "x" * 75), ("hub", "name", "hub-1_a"), ("hub", "key_id", 2**32 - 1),
    ("hub", "group_addr", "224.0.0.251"), ("hub", "interface", "127.0.0.1"),
    ("hub", "slot_s", 86400), ("hub", "gate_s", 3), ("hub", "p_balance", 6.0),
    ("hub", "discovery_s", 0), ("hub", "market_bind", "::"), ("hub", "market_port", 0),
    ("aggregator", "value", 99_996.0), ("aggregator", "max_kw", 1000),
    ("aggregator", "seed", "any text"), ("mqtt", "host", "mqtt_broker"),
    ("mqtt", "host", "192.0.2.7"), ("coap", "bind", "::"), ("web", "host", "::1"),
    ("web", "experiment_plot", "not-made-yet/plot.svg"), ("web", "port", 0),
    ("settlement", "poll_s", 0.01), ("platform", "sources", {"1": "wind"}),
    ("platform", "incentives", {"conservation": {"rate": 3.0}, "budget": 0}),
]  # fmt: skip


@pytest.mark.parametrize("section, name, value", GOOD, ids=lambda v: str(v)[:30])
def test_a_good_value_at_the_edge_of_its_range_loads(hub_site, section, name, value):
    cfg = hub_toml.load(hub_with(hub_site, section, name, value))
    got = cfg if section == "hub" else cfg["aggregators"][0] if section == "aggregator" else (
        cfg["integrations"][section])  # fmt: skip
    if name == "incentives":
        assert got[name]["conservation"] == {"rate": 3.0, "cap": 50} and got[name]["budget"] == 0
    elif name not in ("experiment_plot", "sources"):
        assert got[name] == value


# `gridbid hub run` as a user runs it: one line, exit code 2, no traceback.
RUNS = [
    ("hub", "store", 5),
    ("hub", "group_addr", "not-an-ip"),
    ("hub", "k", 0),
    ("hub", "slot_s", 8.5),
    ("aggregator", "value", INF),
    ("hub", "p_con", NAN),
]


@pytest.mark.parametrize("section, name, value", RUNS, ids=lambda v: str(v)[:30])
def test_hub_run_says_one_line_and_exits_2(hub_site, section, name, value):
    path = hub_with(hub_site, section, name, value)
    hub = Gridbid("hub", "run", "--config", path, cwd=ROOT)
    code = hub.finish(60)
    assert code == 2, hub.output
    assert len(hub.lines) == 1 and name in hub.output, hub.output
    assert "Traceback" not in hub.output and hub.output.startswith("error: ")


def test_hub_run_with_a_keys_file_without_a_group_key_exits_2(hub_site, tmp_path):
    folder, _data = hub_site
    for name in ("hub.toml", "aggregator-1.json", "aggregator-2.json", "aggregator-3.json"):
        shutil.copy(folder / name, tmp_path / name)
    secret_files.write(tmp_path / "hub-keys.json", {"master": M})
    hub = Gridbid("hub", "run", "--config", tmp_path / "hub.toml", cwd=ROOT)
    assert hub.finish(60) == 2, hub.output
    assert len(hub.lines) == 1 and "group" in hub.output and "Traceback" not in hub.output
