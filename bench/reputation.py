"""What the market's reputations cost at a slot's opening on a big store
(hub/store/reputation.py Reputations, read by hub/market/exchange.py open_slot on the
hub's loop), against views.py's full scans they replace.

    .venv/bin/python bench/reputation.py [--contracts 200000]

The store is bench/metrics_scrape.py's (plain SQL rows; the last 1 % of contracts live).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics_scrape import build  # noqa: E402

from hub.store import Store, views  # noqa: E402
from hub.store.reputation import Reputations  # noqa: E402


def ms(fn):
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contracts", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hub.sqlite"
        build(path, args.contracts, int(args.contracts * 0.9), 1000, 60)
        store = Store(path)
        try:
            scans = [ms(lambda: (views.aggregator_reputation(store),
                                 views.battery_reputation(store))) for _ in range(3)]  # fmt: skip
            tally = Reputations()
            first = ms(lambda: tally.read(store))
            later = [ms(lambda: tally.read(store)) for _ in range(args.runs)]
            assert tally.read(store)[0] == views.aggregator_reputation(store)
        finally:
            store.close()
    print("%d contracts: full scans %.0f ms; Reputations: first read %.0f ms, then median "
          "%.1f ms" % (args.contracts, statistics.median(scans), first,
                       statistics.median(later)))  # fmt: skip


if __name__ == "__main__":
    main()
