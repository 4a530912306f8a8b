"""One battery (the firmware on the MicroPython VM, simulated Modbus devices) and
8 aggregators bidding over TCP on loopback. Prints:

- bids/s the battery takes, answers included (auction window --auction-ms, 50 ms);
- bid -> answer latency p50/p99 as an aggregator sees it, and the part after the
  auction closed (the battery's own decision time; ETP's deadline is 500 ms);
- DeviceFailure latency: BMS alarm raised in the simulator -> frame received by
  every aggregator (deadline 200 ms), over several alarms;
- the firmware's live heap peak.

    .venv/bin/python bench/firmware_auction.py [--rounds 40] [--aggregators 8]
    .venv/bin/python bench/firmware_auction.py --romfs --heap 120k   # the ROMFS build

--romfs runs the ROMFS build (tools/flash.py build --romfs), as a board without
PSRAM must: the modules run in place from the image, mapped outside the VM's
heap (tools/romvm.py), so the heap holds only what the firmware allocates. On
this 64-bit VM that is ~109 KB with 8 aggregators (each session ~1.8 KB): 120k.
An ESP32's 100 KB takes 2 (the heap test's case); 32-bit pointers make a board's
figures ~55-60 % of the VM's.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "firmware"))
sys.path.insert(0, str(ROOT / "tools"))

import flash  # noqa: E402

from protocol import message  # noqa: E402
from simulator.fleet import Fleet  # noqa: E402


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def bench(args, tmp):
    bundle = romfs = None
    if args.romfs:
        bundle = flash.build("unix", Path(tmp) / "build", romfs=True)
        romfs = flash.romfs_path(bundle)
    fleet = Fleet(tmp, aggregators=range(1, args.aggregators + 1), heap=args.heap,
                  auction_ms=args.auction_ms, max_peers=max(8, args.aggregators),
                  heap_report_s=1, status_ms=2000, bundle=bundle, romfs=romfs)  # fmt: skip
    try:
        device = await fleet.add(sim_settings={"capacity_kwh": 500.0, "soc_pct": 90.0})
        await device.start()
        links = []
        for agg_id in range(1, args.aggregators + 1):
            agg = await fleet.aggregator(agg_id)
            link = await agg.connect(device.address, fleet.tcp_port, device.device_id)
            offer = await link.query()
            links.append((link, offer))
        print("device on %s, %d aggregators connected; %d rounds"
              % (device.runtime, len(links), args.rounds), file=sys.stderr)  # fmt: skip
        answer_ms, decision_ms, bids = [], [], 0
        started = time.perf_counter()
        for round_no in range(args.rounds):
            sent = {}
            for i, (link, offer) in enumerate(links):
                price = offer.sale_price + 0.1 + (i * 7 + round_no) % 11 / 10
                bid = await link.bid(device.device_id, price, offer.energy_total)
                sent[id(link)] = (bid, int(time.time() * 1000))
            first_ms = min(at for _bid, at in sent.values())
            for link, _offer in links:
                bid, at = sent[id(link)]
                _got, received = await link.answer(bid)
                answer_ms.append(received - at)
                decision_ms.append(received - (first_ms + args.auction_ms))
                bids += 1
        elapsed = time.perf_counter() - started

        failure_ms = []
        for _ in range(args.alarms):
            raised = int(time.time() * 1000)
            device.sim.set_alarm(1)
            for link, _offer in links:
                _got, received = await link.expect(message.DEVICE_FAILURE, timeout=3)
                failure_ms.append(received - raised)
            device.sim.set_alarm(0)
            mark = len(device.lines)
            await device.wait_for("battery recovered", after=mark, timeout=5)
        await asyncio.sleep(1.2)  # one more heap report
        oom = sum("MemoryError" in line or "out of memory" in line for line in device.lines)
        heap = (device.peak_heap(), fleet.heap, oom)
        return bids / elapsed, answer_ms, decision_ms, failure_ms, heap
    finally:
        await fleet.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--aggregators", type=int, default=8)
    parser.add_argument("--auction-ms", type=int, default=50)
    parser.add_argument("--alarms", type=int, default=5)
    parser.add_argument("--heap", default="512k", help="VM heap (-X heapsize)")
    parser.add_argument(
        "--romfs", action="store_true", help="run the ROMFS build, modules outside the heap"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gridbid-bench-") as tmp:
        rate, answers, decisions, failures, (heap, heap_size, oom) = asyncio.run(bench(args, tmp))
    print("bids answered          %d" % len(answers))
    print("bid -> answer          p50 %d ms, p99 %d ms (auction window %d ms)"
          % (pct(answers, 50), pct(answers, 99), args.auction_ms))  # fmt: skip
    print("auction close -> answer p50 %d ms, p99 %d ms (ETP deadline 500 ms)"
          % (pct(decisions, 50), pct(decisions, 99)))  # fmt: skip
    print("DeviceFailure          p50 %d ms, max %d ms, %d alarms x %d aggregators (deadline 200)"
          % (statistics.median(failures), max(failures), args.alarms,
             args.aggregators))  # fmt: skip
    build = "ROMFS build" if args.romfs else "modules compiled from source"
    print("live heap peak         %s bytes (VM -X heapsize=%s, 64-bit, %s); %d out-of-memory"
          % (heap, heap_size, build, oom))  # fmt: skip
    print(
        "firmware_auction: %.0f bids/s with %d aggregators; bid->answer p50 %d / p99 %d ms; "
        "close->answer p99 %d ms; DeviceFailure max %d ms; peak heap %s B at %s"
        % (
            rate,
            args.aggregators,
            pct(answers, 50),
            pct(answers, 99),
            pct(decisions, 99),
            max(failures),
            heap,
            heap_size + (" (ROMFS)" if args.romfs else ""),
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
