"""`gridbid credit ...`: the stable credit (hub/integrations/platform/credit.py).

gridbid credit rate 3500 --currency THB --id r-2026-11   operator sets the rate
gridbid credit buy aggregator-1 100000 --id pay-0042     100000 fiat minor units in
gridbid credit redeem owner-101 5000000 --id out-0007 --wallet owner-101.json
                                                         base units out: the holder signs
gridbid credit opening aggregator-1 0 --id open-1        credits held before the ledger
gridbid credit balances | reconcile                      reads: they make nothing
"""

from gridbid.platform_cli import add_common, execute, need_id, own_wallet, read

ACCOUNT = "the account: its public key, or its name in <keys>/accounts.json or owner-<device>"


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("rate", help="set the rate: fiat minor units per credit")
    p.add_argument("fiat_per_credit", type=int, help="fiat minor units (e.g. satang) per credit")
    p.add_argument("--currency", help="default: [platform] currency")
    p = sub.add_parser("buy", help="record a purchase: fiat paid -> credits minted")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("fiat", type=int, help="fiat paid, in minor units")
    p = sub.add_parser("redeem", help="record a redemption: credits burned -> fiat paid")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("units", type=int, help="credit base units burned")
    p = sub.add_parser("opening", help="credits an account held before the ledger")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("units", type=int, help="credit base units it held")
    sub.add_parser("balances", help="what the store says each account holds")
    sub.add_parser("reconcile", help="compare the store with the chain (exit 1 if not equal)")
    for name, p in sub.choices.items():
        add_common(p, chain=name != "balances", command_id=name not in ("balances", "reconcile"),
                   participant=name == "redeem")  # fmt: skip


def run(args):
    if args.action == "balances":
        return read(args, lambda platform: platform.credit.balances())

    async def action(platform):
        c = platform.credit
        if args.action == "rate":
            currency = args.currency or platform.settings["currency"]
            return await c.set_rate(need_id(args), args.fiat_per_credit, currency)
        if args.action == "buy":
            return await c.purchase(need_id(args), args.account, args.fiat)
        if args.action == "redeem":
            return await c.redeem(need_id(args), args.account, args.units, own_wallet(args))
        if args.action == "opening":
            return await c.opening(need_id(args), args.account, args.units)
        return await reconciled(platform)

    return execute(args, action, read_only=args.action == "reconcile")


async def reconciled(platform):
    from hub.integrations.platform.engine import PlatformError

    diffs = await platform.reconcile()
    if diffs:
        raise PlatformError("the store and the chain differ:\n  " + "\n  ".join(diffs))
    return {"reconciled": True}
