"""The store's disk kept (hub/disk.py): telemetry rolled up on its windows, and one
warning (log, event) when the store reaches 80 % of its budget."""

import asyncio
import logging

import pytest

from hub.disk import Disk
from hub.events import Events
from hub.store import Store

T0 = 1_764_000_000 // 3600 * 3600


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "hub.sqlite", synchronous="NORMAL") as s:
        s.add_device(7, 7, "127.0.0.1:1", at=T0)
        with s.transaction():  # 3 hours at 1 Hz, one commit
            for t in range(3 * 3600):
                s.record_telemetry(7, soc=50.0, voltage=52.0, power_kw=-1.0, at=T0 + t)
        yield s


def test_a_round_rolls_up_and_warns_once_at_80_percent(store, tmp_path, caplog):
    events = Events()
    said = []
    events.subscribe(said.append)
    size_mb = (tmp_path / "hub.sqlite").stat().st_size / 1e6
    budget = max(1, int(size_mb / 0.9))  # the store is at ~90 % of it
    disk = Disk(store, events, tmp_path / "hub.sqlite", raw_h=1, minutes_d=1, budget_mb=budget)
    with caplog.at_level(logging.INFO, logger="hub.disk"):
        asyncio.run(disk.keep(now=T0 + 3 * 3600 + 60))
        asyncio.run(disk.keep(now=T0 + 3 * 3600 + 120))
    raw = store.db.execute("SELECT min(at) FROM telemetry").fetchone()[0]
    assert raw >= T0 + 2 * 3600 - 900  # older readings are minute rows now
    minutes = store.db.execute("SELECT count(*) FROM telemetry_rollup WHERE period = 60")
    assert minutes.fetchone()[0] >= 120
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "of its %d MB budget" % budget in warnings[0].getMessage()
    disk_events = [e for e in said if e["kind"] == "disk"]
    assert len(disk_events) == 2 and disk_events[0]["share"] >= 0.8
    assert disk.status()["budget_mb"] == budget


def test_no_budget_no_warning_and_no_event(store, tmp_path, caplog):
    events = Events()
    said = []
    events.subscribe(said.append)
    disk = Disk(store, events, tmp_path / "hub.sqlite", raw_h=6, minutes_d=2, budget_mb=0)
    asyncio.run(disk.keep(now=T0 + 3 * 3600))
    assert said == [] and disk.status()["share"] is None and disk.status()["used_mb"] > 0
    assert store.db.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 3 * 3600
