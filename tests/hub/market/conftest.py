"""Fixtures of the margin tests (test_margin.py, test_margin_attacks.py): a real Exchange
over a real store and LiteSVM chain with the clearing house's margin, and an event loop."""

import asyncio

import pytest
from helpers.settlement import World
from test_exchange import DEVICES

from hub import controls as hub_controls
from hub.events import Events
from hub.ledger import Ledger
from hub.market.exchange import Exchange
from hub.market.maker import MarketMaker

SLOT_S, GATE_S = 60, 20


@pytest.fixture
def world(tmp_path, loop):
    """A market that settles: its margin (w.m) over a chain whose faucet funds wallets."""
    w = World(tmp_path, faucet=True)
    for device in DEVICES:
        w.store.add_device(device, device, "127.0.0.%d" % (device - 980))
    maker = MarketMaker(w.store, "hub", SLOT_S, GATE_S)
    ledger = Ledger(w.store, SLOT_S, GATE_S, "hub")
    controls = hub_controls.Controls(w.store, Events())
    w.exchange = Exchange(maker, ledger, w.store, controls, "hub", {1: "one", 2: "two"}, 47401)
    w.m = w.margin()
    w.exchange.use_margin(w.m)
    yield w
    w.store.close()


@pytest.fixture
def loop():
    """The event loop the margin's requests run on (ask() drives it)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
