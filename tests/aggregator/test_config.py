"""aggregator.toml: the example parses and documents every setting; faults are one line."""

import re
import shutil
from pathlib import Path

import pytest

from aggregator import config, identity, wallet
from transport import secret_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "aggregator" / "aggregator.example.toml"


@pytest.fixture
def site(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "aggregator.toml")
    identity.create(str(tmp_path / "acme.json"), 2, "acme")
    wallet.create(tmp_path / "acme-wallet.json")
    secret_files.write(tmp_path / "market-hub.json",
                       config.admission("hub", "192.0.2.1", 47410, 2, b"k" * 32))  # fmt: skip
    return tmp_path


def test_the_example_loads_and_explains_every_setting(site):
    cfg = config.load(site / "aggregator.toml")
    assert (cfg["key_id"], cfg["name"], cfg["strategy"]) == (2, "acme", "value")
    (market,) = cfg["markets"]
    assert (market["market"], market["host"], market["port"]) == ("hub", "192.0.2.1", 47410)
    text = EXAMPLE.read_text()
    for name in config.AGGREGATOR_DEFAULTS:
        assert re.search(r"^(# )?%s = " % name, text, re.M), "%s is not in the example" % name
    assert "master" not in repr(cfg["identity"]) and "6b6b" not in repr(cfg)
    assert repr(cfg["wallet"]) == "<Wallet %s>" % cfg["wallet"].pubkey  # never its secret


@pytest.mark.parametrize(
    "change, why",
    [
        (("bidders = 3", "bidders = 0"), "bidders must be a whole number 1..1000"),
        (("value = 22.0", "value = -1"), "value must be a finite number 0..100000"),
        (("[aggregator]", "[aggregator]\nvalu = 3"), "unknown settings ['valu']"),
        (('identity = "acme.json"', 'identity = "none.json"'), "no aggregator identity"),
        (('admission = "market-hub.json"', 'admission = "x.json"'), "no admission"),
        (
            ('admission = "market-hub.json"', 'admission = "market-hub.json"\nkey = "abc"'),
            "takes admission",
        ),
        (('wallet = "acme-wallet.json"', 'wallet = "none.json"'), "no wallet file"),
        (('wallet = "acme-wallet.json"', 'wallet = "acme.json"'), "not a solana-keygen"),
        (("margin_credits = 1000.0", "margin_credits = -5"), "margin_credits must be"),
        (("bidders = 3", "bidders = 3\nseed = 1.5"), "seed must be a whole number or a string"),
    ],
)
def test_a_fault_is_one_line(site, change, why):
    path = site / "aggregator.toml"
    path.write_text(path.read_text().replace(*change, 1))
    with pytest.raises(config.ConfigError, match=re.escape(why)) as err:
        config.load(path)
    assert "\n" not in str(err.value)


def test_an_admission_for_another_aggregator_or_readable_by_others_is_refused(site):
    secret_files.write(site / "market-hub.json",
                       config.admission("hub", "192.0.2.1", 47410, 3, b"k" * 32))  # fmt: skip
    with pytest.raises(config.ConfigError, match="no admission of aggregator 2"):
        config.load(site / "aggregator.toml")
    (site / "market-hub.json").chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        config.load(site / "aggregator.toml")


def test_a_wallet_readable_by_others_is_refused(site):
    (site / "acme-wallet.json").chmod(0o644)
    with pytest.raises(config.ConfigError, match="acme-wallet.json is readable by others"):
        config.load(site / "aggregator.toml")
