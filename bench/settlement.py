"""Settlement throughput: settled trades per second, batched, on LiteSVM, and
transactions per second through the JSON-RPC path.

A real hub store (SQLite, synchronous=FULL as the hub opens it) is filled with final
contracts: --batteries batteries selling to --aggregators aggregators, --slots slots per
window, one contract per (battery, slot), its buyer by turns. The uploader
(hub/integrations/settlement/uploader.py)
then settles them end to end: batches per window, canonical
records, signing, the journal (written before each send), sending, statuses, finalizing.
The figure is contracts settled / wall time of the rounds (the contracts' set-up and
the uploader's start-up excluded).

- LiteSVM: the in-process chain runs the real SPL Token / ATA / Memo programs; one core.
- RPC: the same through solana-py's AsyncClient to tests/solana_rpc_front.py over
  LiteSVM in a child process (its own core), on 127.0.0.1: the RPC path's cost
  (HTTP, JSON, base64) on top of the chain's, not a cluster's (a real cluster confirms
  in ~0.4-13 s; this measures what the hub side can push).

How many trades a transaction carries depends on how many of a window's contracts share
a (buyer, battery) pair: they are summed into one transfer. --slots 1 is the worst case
(one transfer per trade, 8 per transaction); the default 4 (an hour of 15-minute slots)
is a typical hour.

Target: >= 1,000 settled trades/s batched on LiteSVM. Then the same chain is rebuilt
from the journal as a restart does (hub/integrations/settlement/rebuild.py): ms per 1,000 replayed
transactions. Figures to read, not assertions.

    .venv/bin/python bench/settlement.py
    .venv/bin/python bench/settlement.py --batteries 500 --slots 1 --skip-rpc
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.integrations.settlement import journal, rebuild, wallets  # noqa: E402
from hub.integrations.settlement.backends import LiteSVMBackend  # noqa: E402
from hub.integrations.settlement.chain import Chain  # noqa: E402
from hub.integrations.settlement.provision import provision  # noqa: E402
from hub.integrations.settlement.transactions import ata  # noqa: E402
from hub.integrations.settlement.uploader import Uploader  # noqa: E402
from hub.store import Store  # noqa: E402
from protocol import contract  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOT_S, GATE_S = 900, 300
TARGET = 1000.0


def fill(store, batteries, aggregators, slots, windows, batch_s):
    """Final contracts straight into the store's tables (set-up, not measured)."""
    base = 1_700_000_000 // batch_s * batch_s
    devices = range(10_001, 10_001 + batteries)
    rows, seq = [], 0
    for w in range(windows):
        for s in range(slots):
            start = base + w * batch_s + s * SLOT_S
            name = contract.slot_name(SLOT_S, GATE_S, "hub", start)
            for d in devices:
                seq += 1
                buyer = 1 + (d + w) % aggregators  # the same pair across a window's slots
                cid = contract.contract_id(d, buyer, seq)
                rows.append((cid, d, buyer, name, start, SLOT_S, 2000, 15.0 + (seq % 700) / 100,
                             "CompletedSuccess", 0.0, 0.4 + (seq % 97) / 1000, seq))  # fmt: skip
    with store._write() as conn:
        conn.executemany(
            "INSERT INTO devices (id, key_id, address, registered_at, last_seen) "
            "VALUES (?, ?, 'x', 0, 0)",
            [(d, d) for d in devices],
        )
        conn.executemany(
            "INSERT INTO contracts (id, device, buyer, slot, start, duration_s, avg_watts, "
            "price, state, created_at, delivered_kwh, confirm_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows), devices


def world(tmp, args):
    folder = Path(tmp) / "wallets"
    folder.mkdir(mode=0o700)
    payers = wallets.payers(folder, range(1, args.aggregators + 1), create_missing=True)
    owners = wallets.Owners({}, folder / "owners.json", make=folder / "owners")
    store = Store(Path(tmp) / "hub.sqlite")  # synchronous=FULL, as the hub
    t = time.perf_counter()
    count, devices = fill(store, args.batteries, args.aggregators, args.slots, args.windows,
                          args.slots * SLOT_S)  # fmt: skip
    for d in devices:
        owners.get(d)  # owners' keys made up front (file writes are set-up, not settling)
    return folder, payers, owners, store, count, time.perf_counter() - t


async def settle(up, count):
    # start() waits until nothing signed before it can land (up to a blockhash's life,
    # 60-90 s on a cluster) and reads the chain's memos: on this empty chain there is
    # nothing to wait for or read, and it is not part of settling.
    up.ready = True
    t, rounds, cpu = time.perf_counter(), 0, time.process_time()
    while True:
        rounds += 1
        result = await up.cycle()
        if result["planned"] == 0 and result["open"] == 0:
            break
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    counts = journal.counts(up.store)
    assert counts["contracts"] == count, counts
    txs = counts["transactions"].get("finalized", 0)
    return {"wall": wall, "cpu": cpu, "rounds": rounds, "txs": txs,
            "batches": sum(counts["batches"].values())}  # fmt: skip


def say(label, count, r):
    print("%-9s %6d trades in %3d batches, %5d transactions: %6.2f s -> %7.0f trades/s, "
          "%6.0f tx/s (CPU here %.2f s; %d rounds)"
          % (label, count, r["batches"], r["txs"], r["wall"], count / r["wall"],
             r["txs"] / r["wall"], r["cpu"], r["rounds"]), flush=True)  # fmt: skip


async def litesvm(args):
    with tempfile.TemporaryDirectory(prefix="gridbid-bench-") as tmp:
        folder, payers, owners, store, count, setup = world(tmp, args)
        chain = Chain()
        mint = provision(chain, folder, payers, 10**9, 6)
        up = Uploader(
            store,
            LiteSVMBackend(chain),
            payers,
            owners,
            mint,
            name="hub",
            batch_s=args.slots * SLOT_S,
            max_batch=args.max_batch,
        )
        r = await settle(up, count)
        say("LiteSVM", count, r)
        # A restart (or a `gridbid credit|rec|gov` call) rebuilds this chain from the
        # journal (hub/integrations/settlement/rebuild.py): what that costs per transaction.
        t = time.perf_counter()
        again, _mint, replayed, failed = rebuild.start(
            store.db.conn, folder, payers, 10**9, 6)  # fmt: skip
        wall = time.perf_counter() - t
        assert failed == 0 and replayed == r["txs"], (replayed, failed)
        assert all(again.token_balance(a) == chain.token_balance(a)
                   for a in (ata(w.pubkey, mint) for w in payers.values()))  # fmt: skip
        print("rebuild   %6d transactions replayed in %.2f s -> %.0f ms per 1,000"
              % (replayed, wall, wall / max(1, replayed) * 1e6), flush=True)  # fmt: skip
        store.close()
        return count / r["wall"]


async def rpc(args, concurrency, delay_ms):
    from hub.integrations.settlement.rpc_backend import RpcBackend

    with tempfile.TemporaryDirectory(prefix="gridbid-bench-") as tmp:
        folder, payers, owners, store, count, setup = world(tmp, args)
        front = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "solana_rpc_front.py"), "--wallets",
             str(folder), "--aggregators", ",".join(str(k) for k in payers),
             "--delay-ms", str(delay_ms)],  # a cluster's 0.4 s blocks, 150 valid
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            _ready, url, mint = front.stdout.readline().split()
            from solders.pubkey import Pubkey

            backend = RpcBackend(url, poll_s=0.01, concurrency=concurrency)
            up = Uploader(
                store,
                backend,
                payers,
                owners,
                Pubkey.from_string(mint),
                name="hub",
                batch_s=args.slots * SLOT_S,
                max_batch=args.max_batch,
            )
            r = await settle(up, count)
            await backend.close()
            say("RPC %d/%g" % (concurrency, delay_ms), count, r)
        finally:
            front.terminate()
            front.wait()
        store.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batteries", type=int, default=250)
    parser.add_argument("--aggregators", type=int, default=3)
    parser.add_argument("--slots", type=int, default=4, help="slots per window (batch)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=1000)
    parser.add_argument("--skip-rpc", action="store_true")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=50.0,
        help="RPC: latency added to each answer in the second pair of runs",
    )
    args = parser.parse_args()
    print("settlement bench: %d batteries, %d aggregators, %d slots per window, %d windows "
          "(%s, %d CPUs)" % (args.batteries, args.aggregators, args.slots, args.windows,
                             sys.platform, os.cpu_count()))  # fmt: skip
    rate = asyncio.run(litesvm(args))
    print("target >= %.0f settled trades/s batched on LiteSVM: %s"
          % (TARGET, "met" if rate >= TARGET else "NOT met"))  # fmt: skip
    if not args.skip_rpc:
        print("RPC c/d: c sends in flight at once, d ms added to every answer (a remote node)")
        for concurrency, delay_ms in ((1, 0), (16, 0), (1, args.delay_ms), (16, args.delay_ms)):
            asyncio.run(rpc(args, concurrency, delay_ms))


if __name__ == "__main__":
    main()
