"""What a Prometheus scrape of the hub's /metrics costs on a big store
(hub/integrations/web/metrics.py).

A store with --contracts contracts (a month of 1,000 batteries each selling every 15 min
slot is ~2.9 million), --settled of them in settlement batches, and a day of 1 Hz
telemetry rows for --batteries batteries (no metric reads telemetry: the row count
shows it does not matter). Then, timed:
1. the store's part of a scrape, as the page's Reader thread runs it (StoreCounts: the
   first after a start counts everything, later ones only live and new rows), and
2. GET /metrics over HTTP from a real Hub with its page on that store (in-process), the
   whole answer.

    .venv/bin/python bench/metrics_scrape.py [--contracts 1000000]

Rows go in with plain SQL in one transaction (foreign keys off for the load only): the
hub's own write path would take hours for millions of contracts and is not what is timed.
"""

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from hub.config import hub_toml  # noqa: E402
from hub.integrations.settlement import schema as settlement_schema  # noqa: E402
from hub.integrations.web.metrics import StoreCounts  # noqa: E402
from hub.service import Hub  # noqa: E402
from hub.store import Store  # noqa: E402
from hub.store.views import ReadStore  # noqa: E402
from protocol.contract import STATE_NAMES  # noqa: E402

# Contracts have their outcome once their slot has ended (the ledger expires overdue ones):
# only the last two slots' are live (bought for the next slot, or running).
FINAL = {"CompletedSuccess": 0.9, "CompletedFailureByScada": 0.03, "TerminatedByAtn": 0.05,
         "CompletedUnknownOutcome": 0.02}  # fmt: skip
LIVE = {"Confirmed": 0.5, "Active": 0.5}


def build(path, contracts, settled, batteries, telemetry_s):
    with Store(path) as store:
        settlement_schema.migrate(store.db)
        for device in range(1, batteries + 1):
            store.add_device(device, device, "127.0.0.1", at=0.0)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    rng = random.Random(1)
    start = 1_790_000_000

    def state(i):
        shares = LIVE if i >= contracts - 2 * batteries else FINAL
        return rng.choices(list(shares), list(shares.values()))[0]

    with conn:
        rows = []
        for i in range(contracts):
            slot_start = start + i // batteries * 900  # a slot's contracts, then the next's
            rows.append(
                (
                    "c%09d" % i,
                    i % batteries + 1,
                    i % 3 + 1,
                    "rt15gate5.hub.%d" % slot_start,
                    slot_start,
                    state(i),
                    float(start),
                )
            )
        conn.executemany(
            "INSERT INTO contracts (id, device, buyer, slot, start, duration_s, avg_watts, "
            "price, state, created_at) VALUES (?, ?, ?, ?, ?, 900, 2000, 18.5, ?, ?)", rows,
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO settlement_items (contract, batch, kwh, amount) VALUES (?, 'b', 0.5, 9)",
            (("c%09d" % i,) for i in range(settled)),
        )
        conn.executemany(
            "INSERT INTO telemetry (device, at, soc, remaining_kwh, voltage, power_kw, health) "
            "VALUES (?, ?, 50, 5, 48, 1, 0)",
            ((d, float(start + t)) for t in range(telemetry_s) for d in range(1, batteries + 1)),
        )  # fmt: skip
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def timed(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


async def scrape_hub(folder, runs):
    keys = folder / "hub-keys.json"
    keys.write_text(json.dumps({"master": os.urandom(32).hex(), "group": os.urandom(32).hex()}))
    os.chmod(keys, 0o600)
    identity = folder / "aggregator-1.json"
    identity.write_text(json.dumps({"id": 1, "name": "a", "master": os.urandom(32).hex()}))
    os.chmod(identity, 0o600)
    cfg = hub_toml.check({"hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json"},
                          "aggregator": [{"key_id": 1, "name": "a"}],
                          "web": {"port": 0}}, base=folder)  # fmt: skip
    hub = Hub(cfg)
    await hub.start_integrations()
    times, size = [], 0
    try:
        async with httpx.AsyncClient(base_url=hub.integrations["web"].url) as client:
            await client.get("/metrics")  # the Reader's connection opens
            for _ in range(runs):
                t = time.perf_counter()
                response = await client.get("/metrics")
                times.append((time.perf_counter() - t) * 1000)
                size = len(response.content)
    finally:
        await hub.close()
    return statistics.median(times), max(times), size


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contracts", type=int, default=1_000_000)
    p.add_argument("--settled", type=float, default=0.9, help="share in settlement batches")
    p.add_argument("--batteries", type=int, default=1000)
    p.add_argument("--telemetry-s", type=int, default=3600, help="1 Hz rows per battery")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "hub.sqlite"
        t = time.perf_counter()
        build(path, args.contracts, int(args.contracts * args.settled), args.batteries,
              args.telemetry_s)  # fmt: skip
        print("store: %d contracts (%d settled), %d telemetry rows, %.0f MB, built in %.0f s"
              % (args.contracts, int(args.contracts * args.settled),
                 args.batteries * args.telemetry_s, path.stat().st_size / 1e6,
                 time.perf_counter() - t))  # fmt: skip
        reader = ReadStore(path)
        counts = StoreCounts()
        t = time.perf_counter()
        found = counts.read(reader, True)
        first = (time.perf_counter() - t) * 1000
        truth = dict(reader.db.execute("SELECT state, count(*) FROM contracts GROUP BY state"))
        assert found["contracts"] == {s: truth.get(s, 0) for s in STATE_NAMES}, found
        assert found["settled"] == int(args.contracts * args.settled)
        print("store figures, first scrape after a start (counts all): %.1f ms" % first)
        median, worst = timed(lambda: counts.read(reader, True), args.runs)
        print("store figures, every later scrape: median %.2f ms, max %.2f ms" % (median, worst))
        median, worst = timed(
            lambda: reader.db.execute("SELECT state, count(*) FROM contracts GROUP BY state"
                                      ).fetchall(), 3)  # fmt: skip
        print("(a full GROUP BY state, for comparison: median %.1f ms)" % median)
        reader.close()
        median, worst, size = asyncio.run(scrape_hub(folder, args.runs))
        print("GET /metrics (hub, no settlement): median %.1f ms, max %.1f ms, %d bytes"
              % (median, worst, size))  # fmt: skip


if __name__ == "__main__":
    main()
