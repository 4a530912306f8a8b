"""What a hub that runs for months keeps per slot (issue 17 row 12: a 5-minute soak grew
its RSS by 0.78 MB/min). Each test trades hundreds of slots and asserts that the state
its owner keeps stays bounded; each failed before its fix. bench/soak.py measures it."""

import asyncio
import gc
import weakref

from helpers.hub_site import toml, write_keys

from hub.config import hub_toml
from hub.service import Hub
from simulator.fleet import free_group_port, free_port


class Summary(dict):
    """A slot's summary that a weak reference can watch (a plain dict cannot)."""


def hub_config(folder):
    write_keys(folder / "hub-keys.json", aggregators=[1])
    settings = {
        "hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json", "interface": "127.0.0.1",
                "group_addr": "239.255.77.251", "group_port": free_group_port(),
                "device_port": free_port(), "market_port": 0, "discovery_s": 0.05,
                "slot_s": 10, "gate_s": 5},
        "aggregator": [{"key_id": 1, "name": "agg1"}],
    }  # fmt: skip
    (folder / "hub.toml").write_text(toml(settings))
    return hub_toml.load(folder / "hub.toml")


def test_a_hub_trading_until_stopped_keeps_no_summary_of_past_slots(tmp_path):
    """`gridbid hub run` trades until stopped; run() kept every slot's summary (its trades
    and contracts: ~0.5 kB per battery a slot) for a caller that never came. Failed before
    the fix: all 300 summaries alive."""
    hub = Hub(hub_config(tmp_path))
    alive = []

    async def trade_slot():  # a slot as run() sees it, without waiting for the clock
        await asyncio.sleep(0)
        summary = Summary(slot="s%d" % len(alive), trades=[(1, 1001, 0.5)] * 100)
        alive.append(weakref.ref(summary))
        return summary

    hub.trade_slot = trade_slot

    async def scenario():
        running = asyncio.create_task(hub.run())
        while len(alive) < 300:
            await asyncio.sleep(0.001)
        gc.collect()
        kept = sum(1 for ref in alive if ref() is not None)  # while the hub still runs
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await hub.close()
        return kept

    assert asyncio.run(scenario()) <= 1
