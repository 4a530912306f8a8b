"""What `gridbid credit|rec|gov` share: options, opening the platform, printing results.

Settings come from hub.toml (--config): [hub] store, [settlement] backend / wallets /
decimals / mint, and [platform] (DEFAULTS in hub/platform/__init__.py); options override.

The LiteSVM backend keeps its chain in memory, so a CLI process starts with an empty
one: it is rebuilt from the journal, every finalized platform transaction re-executed in
order by the real programs (LiteSVM checks no blockhash age on replay). Keys are the
same files, so the addresses are the same. Settlement's own transfers are not replayed
(provision.py funds the aggregators anew at each hub start on LiteSVM); on a cluster
(an RPC backend) nothing is rebuilt: the chain is the cluster's, and its memos are read
first (recovery.py) so a command that landed but whose record was lost is refused.
"""

import asyncio
import json
import sys
import tomllib
from pathlib import Path

from solders.transaction import Transaction

from hub import keys_file
from hub.platform import DEFAULTS, Keys, Platform, PlatformError, check
from hub.settlement.backends import BackendError, LiteSVMBackend

SOL = 10**9


def add_common(parser):
    parser.add_argument("--config", help="hub.toml ([hub], [settlement], [platform])")
    parser.add_argument("--db", help="the hub's SQLite store (default: [hub] store)")
    parser.add_argument("--keys", help="wallet folder (default: [platform] keys)")
    parser.add_argument("--backend", help='"litesvm" or an RPC URL ([settlement] backend)')
    parser.add_argument("--source", action="append", default=[], metavar="DEVICE=SOURCE",
                        help="a device's source (solar, wind, grid); repeatable")  # fmt: skip
    parser.add_argument("--id", dest="command_id", help="the command's id (a retry reuses it)")


def settings_from(args):
    data, base = {}, Path(".")
    if args.config:
        base = Path(args.config).parent
        data = tomllib.loads(Path(args.config).read_text())
    hub, settlement = data.get("hub", {}), data.get("settlement", {})
    s = check({**DEFAULTS, **data.get("platform", {})}, base, "[platform]")
    s["decimals"] = settlement.get("decimals", s["decimals"])  # one mint: settlement's
    # Sources the batteries' own configs declare; [platform.sources] and --source win.
    keys_path = base / hub.get("keys_file", "hub-keys.json")
    s["sources"] = {**keys_file.battery_sources(keys_path), **s["sources"]}
    for item in args.source:
        device, _, source = item.partition("=")
        s["sources"][int(device)] = source
    return {
        "db": args.db or str(base / hub.get("store", "gridbid-hub.sqlite")),
        "keys": args.keys or s["keys"],
        "backend": args.backend or settlement.get("backend", "litesvm"),
        "mint": settlement.get("mint", ""),
        "platform": s,
    }


def open_platform(args):
    from hub.store import Store

    cfg = settings_from(args)
    store = Store(cfg["db"])
    keys = Keys(cfg["keys"], make=cfg["backend"] == "litesvm")
    decimals = cfg["platform"]["decimals"]
    if cfg["backend"] == "litesvm":
        from hub.settlement.backends import LiteSVMBackend
        from hub.settlement.chain import Chain
        from hub.settlement.provision import provision

        chain = Chain()
        mint = provision(chain, cfg["keys"], {}, 0, decimals)
        chain.airdrop(keys.authority.pubkey, 1000 * SOL)
        backend = LiteSVMBackend(chain)
    else:
        from hub.platform.chain_ops import pk
        from hub.settlement.rpc_backend import RpcBackend

        if not cfg["mint"]:
            raise PlatformError("an RPC backend needs [settlement] mint")
        mint, backend, chain = pk(cfg["mint"]), RpcBackend(cfg["backend"]), None
    platform = Platform(store, backend, keys, mint, cfg["platform"])
    if chain is not None:
        failed = replay(chain, store)
        if failed:
            print("warning: %d journaled transactions did not replay" % failed, file=sys.stderr)
    return platform


def replay(chain, store):
    """Re-execute the finalized platform transactions on a fresh LiteSVM. -> failures."""
    failed = 0
    for (raw,) in store.db.conn.execute(
        "SELECT raw FROM platform_txs WHERE status = 'finalized' AND length(raw) > 0 "
        "ORDER BY created_at, rowid"
    ).fetchall():
        result = chain.svm.send_transaction(Transaction.from_bytes(bytes(raw)))
        failed += not hasattr(result, "compute_units_consumed")
    return failed


def need_id(args):
    if not args.command_id:
        raise PlatformError("this command changes state: give it an --id (reuse it to retry)")
    return args.command_id


async def _recovered(platform, action):
    # On a cluster: commands whose transactions landed but whose records were lost are
    # refused (recovery.py); without the hold (a blockhash's life at each call), so a
    # lost journal's pending command is signed again only by the hub (service.py).
    if not isinstance(platform.engine.backend, LiteSVMBackend):
        await platform.recover(hold=False)
    return await action(platform)


def execute(args, action):
    """Open, run `action(platform)` (a coroutine function), print JSON. -> exit code."""
    try:
        platform = open_platform(args)
    except (PlatformError, ValueError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_recovered(platform, action))
    except (PlatformError, BackendError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    finally:
        platform.engine.store.close()
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
