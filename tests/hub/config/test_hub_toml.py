"""hub.toml's market rules, checked when it is loaded (hub/config/hub_toml.py)."""

import pytest

from hub.config import hub_toml


def check(**hub):
    return hub_toml.check({"hub": {"market_port": 47410, **hub}}, keys=False)


def test_min_aggregators_defaults_to_no_rule_and_takes_a_count():
    assert check()["min_aggregators"] == 0
    assert check(min_aggregators=3)["min_aggregators"] == 3


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", 1001])
def test_a_bad_min_aggregators_is_one_clear_error_at_load(bad):
    with pytest.raises(hub_toml.ConfigError, match="min_aggregators"):
        check(min_aggregators=bad)
