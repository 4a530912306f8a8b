"""`gridbid aggregator run|new|enroll`: an independent aggregator, its identity, and a
battery's enrollment.

    gridbid aggregator run --config aggregator.toml      trade in its markets until Ctrl-C
    gridbid aggregator new --id 2 --name acme --out acme.json [--wallet acme-wallet.json]
    gridbid aggregator enroll --identity acme.json --battery 1001 [--out DIR]

`new` makes the identity file (0600): the aggregator's id, name and master secret,
which never leaves it. `enroll` writes enroll-<id>-<battery>.json (0600): the pair
key this aggregator and that battery share, for the battery's owner, who adds it
with `gridbid device trust`. The file moves out of band (it is a secret: move it as
you would an ssh key). Nothing secret is printed. aggregator/identity.py has the scheme.
"""

import sys
from pathlib import Path

from aggregator import identity
from transport import secret_files


def add_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_it = actions.add_parser("run", help="trade in its markets (aggregator.toml)",
                                description="Run an aggregator on its own machine: its "
                                "identity, strategy and markets from aggregator.toml "
                                "(aggregator/aggregator.example.toml).")  # fmt: skip
    run_it.add_argument("--config", required=True, help="aggregator.toml")
    new = actions.add_parser("new", help="make an aggregator's identity file (0600)",
                             description="Make an aggregator's identity: its key id, its name "
                             "and a fresh master secret, in a 0600 file. Never over an "
                             "existing one: batteries hold keys derived from it.")  # fmt: skip
    new.add_argument("--id", type=int, required=True, help="its key id, 1..2^32-1")
    new.add_argument("--name", required=True, help="its name (in logs and on the market)")
    new.add_argument("--out", required=True, help="the identity file to make")
    new.add_argument("--wallet", help="also make its wallet (a solana-keygen file, 0600): "
                     "margin in markets that settle on chain")  # fmt: skip
    enroll = actions.add_parser(
        "enroll", help="write a battery's enrollment file (its pair key with us)",
        description="Write enroll-<id>-<battery>.json (0600): the pair key this aggregator "
        "shares with the battery. Its owner adds it with `gridbid device trust`.",
    )  # fmt: skip
    enroll.add_argument("--identity", required=True, help="the aggregator's identity file")
    enroll.add_argument("--battery", type=int, action="append", required=True,
                        metavar="DEVICE_ID", help="the battery's id (repeatable)")  # fmt: skip
    enroll.add_argument("--out", default=".", help="folder for the files (default: here)")


def run(args):
    if args.action == "run":
        return trade(args)
    try:
        if args.action == "new":
            if args.wallet and Path(args.wallet).exists():
                raise identity.IdentityError("%s exists: a wallet is never replaced" % args.wallet)
            made = identity.create(args.out, args.id, args.name)
            print("%s: aggregator %d (%s), a new master secret (never shown)"
                  % (args.out, made.key_id, made.name))  # fmt: skip
            if args.wallet:
                from aggregator import wallet

                print("%s: its wallet %s (fund it with the market's credit)"
                      % (args.wallet, wallet.create(args.wallet).pubkey))  # fmt: skip
            return 0
        return enroll(args)
    except (identity.IdentityError, secret_files.SecretFileError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2


def enroll(args):
    me = identity.load(args.identity)
    out = Path(args.out)
    if not out.is_dir():
        raise identity.IdentityError("no folder %s for the enrollment files" % out)
    files = [(b, identity.enrollment(me, b)) for b in args.battery]  # all checked first
    for battery, data in files:
        path = out / ("enroll-%d-%d.json" % (me.key_id, battery))
        secret_files.write(path, data)
        print("%s: battery %d may trust aggregator %d (%s): give it to its owner for "
              "`gridbid device trust`" % (path, battery, me.key_id, me.name))  # fmt: skip
    return 0


def trade(args):
    """Trade in every market of aggregator.toml until Ctrl-C or SIGTERM."""
    import asyncio
    import logging
    import signal

    from aggregator import config
    from aggregator.market_client import MarketLink
    from aggregator.strategy_config import make_strategy
    from aggregator.trader import Trader

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    log = logging.getLogger("gridbid.aggregator")

    from aggregator.store import AggregatorStore, StoreError

    try:
        store = AggregatorStore(cfg["store"])
    except StoreError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2

    async def main():
        trader = Trader(cfg["identity"], make_strategy(cfg), cfg["max_kw"], cfg["bind_timeout_s"],
                        store)  # fmt: skip
        if cfg["wallet"] is not None:
            from aggregator.margin import MarginKeeper

            trader.use_wallet(MarginKeeper(cfg["name"], cfg["wallet"], cfg["margin_credits"],
                                           store))  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        for market in cfg["markets"]:
            where = (market["market"], market["host"], market["port"])
            trader.trade_in(MarketLink(*where, cfg["key_id"], market["key"], trader.on_message))
        log.info("aggregator %d (%s): %s strategy, %d markets", cfg["key_id"], cfg["name"],
                 cfg["strategy"], len(cfg["markets"]))  # fmt: skip
        try:
            await stop.wait()
        finally:
            await trader.close()

    try:
        asyncio.run(main())
    finally:
        store.close()
    print("aggregator %s stopped" % cfg["name"], flush=True)
    return 0
