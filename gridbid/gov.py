"""`gridbid gov ...`: NRG governance (hub/integrations/platform/gov.py).

gridbid gov genesis                                    the fixed supply, once
gridbid gov grant alice 1000 --id g-1                  treasury -> alice
gridbid gov stake alice 500 --lock-s 2592000 --id s-1
gridbid gov unstake alice s-1 --id u-1                 after the lock-up
gridbid gov propose alice p_con 5.0 --voting-s 86400 --effective-s 172800 --id prop-1
gridbid gov vote bob prop-1 yes --id v-1 --wallet bob.json
stake, unstake, propose and vote are the participant's own: --wallet signs here, or
without it a signing request is printed (`gridbid wallet sign`, `gridbid wallet submit`)
gridbid gov tick                                       decide and execute what is due
gridbid gov proposals | rewards [--epoch E]             reads: they make nothing
"""

from gridbid.platform_cli import add_common, execute, need_id, own_wallet, read

ACCOUNT = "the account: its public key, or its name in <keys>/accounts.json"
PARTICIPANT = ("stake", "unstake", "propose", "vote")  # signed by the account's own wallet
READS = ("proposals", "rewards")  # the store only: no wallet, no chain
NO_ID = ("genesis", "tick", "reward")  # ids of their own (genesis, the epoch's), or none


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("genesis", help="create NRG: the whole supply to the treasury, fixed")
    p = sub.add_parser("grant", help="NRG from the treasury to an account")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("amount", type=int, help="NRG")
    p = sub.add_parser("stake", help="lock NRG to vote")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("amount", type=int, help="NRG")
    p.add_argument("--lock-s", type=float, default=30 * 86400, help="lock-up, s (30 days)")
    p = sub.add_parser("unstake", help="withdraw a stake after its lock-up")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("stake", help="the stake's command id")
    p = sub.add_parser("propose", help="propose a market parameter change")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("param", help="slot_s, p_con, k or p_balance")
    p.add_argument("value", type=float, help="its new value")
    p.add_argument("--voting-s", type=float, default=86400, help="voting time, s (1 day)")
    p.add_argument("--effective-s", type=float, default=2 * 86400,
                   help="from now until it applies if passed, s (2 days)")  # fmt: skip
    p = sub.add_parser("vote", help="vote by stake")
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("proposal", help="the proposal's command id")
    p.add_argument("choice", choices=("yes", "no"), help="yes or no")
    sub.add_parser("tick", help="decide ended votes, apply passed proposals that are due")
    sub.add_parser("proposals", help="every proposal and its state")
    p = sub.add_parser("reward", help="compute (once) and pay an ended epoch's incentives")
    p.add_argument("epoch", type=float, help="any unix time inside the epoch")
    p = sub.add_parser("rewards", help="the incentive rewards recorded")
    p.add_argument("--epoch", type=int, help="only this epoch (its start, unix time)")
    for name, p in sub.choices.items():
        add_common(p, chain=name not in READS, command_id=name not in READS + NO_ID,
                   participant=name in PARTICIPANT)  # fmt: skip


def run(args):
    if args.action == "proposals":
        return read(args, lambda platform: platform.gov.proposals())
    if args.action == "rewards":
        return read(args, lambda platform: platform.incentives.rewards(args.epoch))

    async def action(platform):
        g = platform.gov
        if args.action == "genesis":
            return await g.genesis()
        if args.action == "grant":
            return await g.grant(need_id(args), args.account, args.amount)
        wallet = own_wallet(args)
        if args.action == "stake":
            return await g.stake(need_id(args), args.account, args.amount, args.lock_s, wallet)
        if args.action == "unstake":
            return await g.unstake(need_id(args), args.account, args.stake, wallet)
        if args.action == "propose":
            value = int(args.value) if args.param == "slot_s" else args.value
            return await g.propose(need_id(args), args.account, args.param, value,
                                   args.voting_s, args.effective_s, wallet)  # fmt: skip
        if args.action == "vote":
            yes = args.choice == "yes"
            return await g.vote(need_id(args), args.account, args.proposal, yes, wallet)
        if args.action == "tick":
            return g.tick()
        return await platform.incentives.pay(args.epoch)

    return execute(args, action)
