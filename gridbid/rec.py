"""`gridbid rec ...`: renewable energy certificates (hub/integrations/platform/rec.py).

gridbid rec mint --id mint-2026-11-21 --source 101=solar   from metered renewable kWh
gridbid rec list owner-101 1,2,3 400000 --id l-1           price in credit base units
gridbid rec unlist owner-101 3 --id u-1
gridbid rec buy aggregator-1 1,2 --id b-1 --wallet aggregator-1.json
gridbid rec retire aggregator-1 1,2 --reason "2026 scope 2" --id x-1 --wallet ...
list, unlist, buy and retire are the participant's own: --wallet signs here, or without
it a signing request is printed (`gridbid wallet sign`, then `gridbid wallet submit`)
gridbid rec show [--status held|listed|retired]            a read: it makes nothing
"""

from gridbid.platform_cli import add_common, execute, need_id, own_wallet, read


def serials(text):
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("mint", help="mint what metered renewable energy has earned")
    for name, text in (("list", "offer certificates for sale"), ("unlist", "withdraw them"),
                       ("buy", "buy listed certificates with credits"),
                       ("retire", "retire certificates (final, with a memo)")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("account", help="the account: a public key, an accounts.json name "
                       "or owner-<device>")  # fmt: skip
        p.add_argument("serials", type=serials, help="certificate serials: 1,2,3")
        if name == "list":
            p.add_argument("price", type=int, help="credit base units per certificate")
        if name == "retire":
            p.add_argument(
                "--reason", default="", help="why, in the retirement memo (at most 200 bytes)"
            )
    p = sub.add_parser("show", help="the certificates")
    p.add_argument("--status", choices=("held", "listed", "retired"), help="only these")
    for name, p in sub.choices.items():  # show only reads the store: no wallet, no chain
        add_common(p, chain=name != "show", command_id=name != "show", source=name == "mint",
                   participant=name not in ("show", "mint"))  # fmt: skip


def run(args):
    if args.action == "show":
        return read(args, lambda platform: platform.rec.certificates(args.status))

    async def action(platform):
        r = platform.rec
        if args.action == "mint":
            return await r.mint(need_id(args))
        command, wallet = need_id(args), own_wallet(args)
        if args.action == "list":
            return await r.list(command, args.account, args.serials, args.price, wallet)
        if args.action == "unlist":
            return await r.unlist(command, args.account, args.serials, wallet)
        if args.action == "buy":
            return await r.buy(command, args.account, args.serials, wallet)
        return await r.retire(command, args.account, args.serials, args.reason, wallet)

    return execute(args, action)
