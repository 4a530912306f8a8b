"""The README's strategy plug-in, run as a user runs it: the module written from the
README's own code block, named by import path in aggregator.toml, loaded by the
aggregator's config, and trading through a Trader on a real market's exchange (its
bid layers land in the hub's store at the prices the strategy chose)."""

import asyncio
import re
import sys
import time
from pathlib import Path

import pytest

from aggregator import config, identity
from aggregator.market_client import LocalLink
from aggregator.strategy_config import make_strategy
from aggregator.trader import Trader
from hub import controls
from hub.events import Events
from hub.ledger import Ledger
from hub.market.exchange import Exchange
from hub.market.grid import SlotGrid
from hub.market.maker import MarketMaker
from hub.store import Store
from transport import secret_files

ROOT = Path(__file__).resolve().parents[2]


def readme_example():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (example,) = [b for b in blocks if b.startswith("# my_strategies.py")]
    return example


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_strategies.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_strategies:SignalFollower"
    sys.modules.pop("my_strategies", None)


def test_the_readme_strategy_loads_from_aggregator_toml_and_trades(tmp_path, plugin):
    me = identity.create(str(tmp_path / "acme.json"), 2, "acme")
    secret_files.write(tmp_path / "market-hub.json",
                       config.admission("hub", "127.0.0.1", 47410, 2, b"k" * 32))  # fmt: skip
    (tmp_path / "aggregator.toml").write_text(
        '[aggregator]\nidentity = "acme.json"\nstrategy = "%s"\noptions = {share = 0.8}\n\n'
        '[[market]]\nadmission = "market-hub.json"\n' % plugin
    )
    cfg = config.load(tmp_path / "aggregator.toml")
    strategy = make_strategy(cfg)
    assert type(strategy).__name__ == "SignalFollower" and strategy.share == 0.8

    store = Store(tmp_path / "hub.sqlite")
    maker = MarketMaker(store, "hub", 60, 20)
    exchange = Exchange(maker, Ledger(store, 60, 20, "hub"), store,
                        controls.Controls(store, Events()), "hub", {2: "acme"}, 47401)  # fmt: skip
    start = int(time.time() // 60 + 2) * 60
    slot = SlotGrid(60, 20, 0.0).slot_name("hub", start)
    offers = []
    for device, reserve in ((1001, 15.0), (1002, 18.0)):
        store.add_device(device, device, "127.0.0.%d" % (device - 980))
        maker.offer(slot, device, 1.0, reserve)
        offers.append({"device": device, "kwh": 1.0, "reserve": reserve, "max_kw": 5.0,
                       "address": "127.0.0.%d" % (device - 980)})  # fmt: skip

    async def trade():
        trader = Trader(me, strategy)
        trader.trade_in(LocalLink(exchange, 2, trader.on_message))
        exchange.open_slot(slot, start, start - 20, offers, 20.0)  # the signal: 20 c/kWh
        for _ in range(100):
            await asyncio.sleep(0.01)
            if [b for b in store.bids(slot) if b["side"] == "bid"]:
                break
        await trader.close()

    asyncio.run(trade())
    layers = {b["ref"].split(":")[1]: b["price"] for b in store.bids(slot) if b["side"] == "bid"}
    store.close()
    # reserve + 0.8 x (signal - reserve), full reputation: 15 + 4 and 18 + 1.6
    assert layers == {"1001": pytest.approx(19.0), "1002": pytest.approx(19.6)}


def test_a_bad_strategy_path_is_one_line_at_load(tmp_path, plugin):
    for strategy, why in (("my_strategies:Nope", "has no Nope"),
                          ("no_such_module:X", "cannot import no_such_module"),
                          ("my_strategies:Buyer", None),  # a Buyer itself is a class to use
                          ("value_and_more", "value, adaptive, truthful, utility or")):  # fmt: skip
        settings = {**config.STRATEGY_DEFAULTS, "strategy": strategy}
        if why is None:
            config.check_strategy(settings, "aggregator.toml")
            continue
        with pytest.raises(config.ConfigError, match=why):
            config.check_strategy(settings, "aggregator.toml")
