"""The experiment's speed: 100 batteries x 50 slots x N in {1, 2, 3, 5, 8} x 20 repeats
(the baselines included) on the hub's market, in one process (one core).

Target: <= 60 s. Prints the wall time, the time per slot cleared, and the gain it
measured (so a fast but wrong run shows). Exit 1 if over the target.

    .venv/bin/python bench/experiment.py
    .venv/bin/python bench/experiment.py --repeats 5 --market bilateral
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import experiment  # noqa: E402

TARGET_S = 60.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--market", default="hub", choices=experiment.MARKETS)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    ns = (1, 2, 3, 5, 8)
    started = time.perf_counter()
    results = experiment.run_experiment(aggregators=ns, devices=100, slots=50, seed=1,
                                        repeats=args.repeats, market=args.market)  # fmt: skip
    took = time.perf_counter() - started
    slots = args.repeats * 50 * (len(ns) + 3)
    top = results["runs"][-1]["gain"]["informed"]
    print("experiment (%s market): 100 batteries x 50 slots x N %s x %d repeats + 3 baselines:"
          " %.1f s (%.2f ms a slot; target <= %.0f s)"
          % (args.market, ",".join(map(str, ns)), args.repeats, took, 1000 * took / slots,
             TARGET_S))  # fmt: skip
    print("N=8 over the informed monopsonist: owners' revenue %+.1f ± %.1f %%"
          % (top["revenue_pct"], top["revenue_pct_ci"] or 0))  # fmt: skip
    return 0 if took <= TARGET_S or args.repeats != 20 else 1


if __name__ == "__main__":
    sys.exit(main())
