"""The hub's disk under a fleet's telemetry: what the store costs per 1,000 batteries
after roll-up (hub/store/telemetry.py, hub/disk.py), and how fast the page reads it.

1. A month: --batteries batteries x --days days, a day at a time: the day's readings
   are written (one every --every-s seconds per battery: the roll-up's output, minute
   and hour rows, is the same at 1 Hz, which a month of cannot be written here in
   minutes), then the hub's own roll-up runs as at the end of that day with the
   default windows. Printed per day: rows, store size; at the end the size, and the
   month's growth in hour rows, per 1,000 batteries.
2. A 1 Hz hour: the same batteries, every second for --hour-s seconds, as the hub
   writes them (one transaction per second of readings), and the raw window's cost per
   1,000 batteries at 1 Hz; then the roll-up of that hour, timed (the hub does it in
   600 s batches between slots).
3. The page's views on that store (hub/store/views.py, as /api/... reads them), timed.

    .venv/bin/python bench/telemetry_disk.py [--batteries 100] [--days 30]

Row counts, and so sizes, grow with the batteries exactly: the figures are given per
1,000 batteries from --batteries (100 by default: a month of 1,000 takes ~an hour here).
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.store import Store, telemetry, views  # noqa: E402

HOUR, DAY = 3600, 86400


def size_mb(path):
    return sum(Path(str(path) + end).stat().st_size for end in ("", "-wal", "-shm")
               if Path(str(path) + end).exists()) / 1e6  # fmt: skip


def write(store, batteries, start, end, every_s, rng):
    """Readings of [start, end) for every battery, one transaction per step."""
    rows = 0
    conn = store.db.conn
    for t in range(int(start), int(end), every_s):
        with store.transaction():
            conn.executemany(
                "INSERT INTO telemetry (device, at, soc, remaining_kwh, voltage, power_kw, "
                "health) VALUES (?, ?, ?, ?, ?, ?, 0)",
                [(d, t + rng.random(), 50 + d % 40, 5.0, 52.0, rng.uniform(-3, 3))
                 for d in range(1, batteries + 1)],
            )  # fmt: skip
        rows += batteries
    with store.transaction() as conn:  # as Store.record_telemetry keeps it, once a call
        conn.execute("UPDATE devices SET last_seen = max(last_seen, ?)", (end,))
    return rows


def count(store, where):
    return store.db.execute("SELECT count(*) FROM " + where).fetchone()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batteries", type=int, default=100, help="figures are per 1,000")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--every-s", type=int, default=60, help="a reading this often (month)")
    parser.add_argument("--hour-s", type=int, default=600, help="seconds written at 1 Hz")
    parser.add_argument("--raw-h", type=int, default=1, help="hub.telemetry_raw_h")
    parser.add_argument("--minutes-d", type=int, default=1, help="hub.telemetry_minutes_d")
    args = parser.parse_args()
    rng = random.Random(1)
    per_k = 1000 / args.batteries
    with tempfile.TemporaryDirectory(prefix="gridbid-disk-") as tmp:
        path = Path(tmp) / "hub.sqlite"
        store = Store(path, synchronous="NORMAL")
        t0 = (int(time.time()) - args.days * DAY) // DAY * DAY
        with store.transaction() as conn:
            conn.executemany("INSERT INTO devices (id, key_id, address, registered_at, "
                             "last_seen) VALUES (?, ?, '127.0.0.1', ?, ?)",
                             [(d, d, t0, t0) for d in range(1, args.batteries + 1)])  # fmt: skip
        print("1. %d batteries x %d days, a reading every %d s, windows %d h raw, %d d "
              "minutes" % (args.batteries, args.days, args.every_s, args.raw_h,
                           args.minutes_d), flush=True)  # fmt: skip
        rolled_s = 0.0
        for day in range(args.days):
            start = t0 + day * DAY
            written = write(store, args.batteries, start, start + DAY, args.every_s, rng)
            began = time.perf_counter()
            telemetry.roll_up(store, start + DAY, args.raw_h * HOUR, args.minutes_d * DAY)
            telemetry.trim(store)
            rolled_s += time.perf_counter() - began
            print("  day %2d: %d readings; raw %d, minute rows %d, hour rows %d; store "
                  "%.0f MB" % (day + 1, written, count(store, "telemetry"),
                               count(store, "telemetry_rollup WHERE period = 60"),
                               count(store, "telemetry_rollup WHERE period = 3600"),
                               size_mb(path)), flush=True)  # fmt: skip
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        hours = count(store, "telemetry_rollup WHERE period = 3600")
        total = size_mb(path)
        used = store.db.execute("PRAGMA page_count").fetchone()[0] * store.db.execute(
            "PRAGMA page_size").fetchone()[0] / 1e6 - store.db.execute(
            "PRAGMA freelist_count").fetchone()[0] * 4096 / 1e6  # fmt: skip
        hour_mb = _table_mb(store, "telemetry_rollup", hours)
        print(
            "  after %d days: store %.0f MB (%.0f MB in use), of it %d hour rows ~%.0f MB; "
            "roll-up took %.1f s" % (args.days, total, used, hours, hour_mb, rolled_s)
        )
        print("  per 1,000 batteries: %.0f MB a month of hour rows (goal <= 200), %.0f MB "
              "the store at %d days" % (hour_mb * per_k * 30 / args.days, used * per_k,
                                       args.days), flush=True)  # fmt: skip

        print("2. %d batteries at 1 Hz for %d s, as the hub writes them (a store of its "
              "own)" % (args.batteries, args.hour_s), flush=True)  # fmt: skip
        fresh = Store(Path(tmp) / "hour.sqlite", synchronous="NORMAL")
        with fresh.transaction() as conn:
            conn.executemany("INSERT INTO devices (id, key_id, address, registered_at, "
                             "last_seen) VALUES (?, ?, '127.0.0.1', ?, ?)",
                             [(d, d, t0, t0) for d in range(1, args.batteries + 1)])  # fmt: skip
        start = t0 + args.days * DAY
        began = time.perf_counter()
        written = write(fresh, args.batteries, start, start + args.hour_s, 1, rng)
        took = time.perf_counter() - began
        raw_mb = _table_mb(fresh, "telemetry", written)
        per_hour = raw_mb * HOUR / args.hour_s * per_k
        print("  %d readings in %.1f s (%.0f/s); %.1f MB: %.0f MB an hour, %.0f MB for the "
              "%d h raw window, per 1,000 batteries" % (written, took, written / took, raw_mb,
              per_hour, per_hour * args.raw_h, args.raw_h), flush=True)  # fmt: skip
        began = time.perf_counter()
        minutes, _hours = telemetry.roll_up(fresh, start + args.hour_s + 2 * HOUR, HOUR, DAY)
        took = time.perf_counter() - began
        began = time.perf_counter()
        trimmed = telemetry.trim(fresh)
        trim_s = time.perf_counter() - began
        per_minute = 60 / args.hour_s * 1000
        print("  rolled up in %.2f s (%d minute rows): %.0f ms per minute of readings; %d "
              "trimmed in %.2f s: %.0f ms per minute" % (took, minutes, took * per_minute,
              trimmed, trim_s, trim_s * per_minute), flush=True)  # fmt: skip
        fresh.close()

        print("3. the page's views on that store", flush=True)
        for name, fn in (("totals", lambda: views.totals(store)),
                         ("devices", lambda: views.devices(store)),
                         ("telemetry of one battery", lambda: views.telemetry(store, 7, 100)),
                         ("energy of one battery, a month", lambda: telemetry.energy(
                             store.db.conn, 7, t0, t0 + args.days * DAY)),
                         ("energy of every battery, a day", lambda: [telemetry.energy(
                             store.db.conn, d, t0, t0 + DAY)
                             for d in range(1, args.batteries + 1)])):  # fmt: skip
            took = []
            for _ in range(5):
                began = time.perf_counter()
                fn()
                took.append(time.perf_counter() - began)
            print("  %-34s %8.1f ms (median of 5)" % (name, 1000 * sorted(took)[2]), flush=True)
        store.close()
        print("summary: %.0f MB a month of hour rows per 1,000 batteries (goal <= 200); "
              "store %.0f MB after %d days" % (hour_mb * per_k * 30 / args.days, used * per_k,
                                               args.days))  # fmt: skip


def _table_mb(store, table, rows):
    """`rows` of a table's share of the file, its indexes with it (dbstat)."""
    names = [table] + [
        i
        for (i,) in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        )
    ]
    try:
        pages = store.db.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN (%s)" % ",".join("?" * len(names)), names
        ).fetchone()[0]
        total = store.db.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
        return (pages or 0) / 1e6 * (rows / total if total else 0)
    except Exception:  # no dbstat in this SQLite
        return float("nan")


if __name__ == "__main__":
    main()
