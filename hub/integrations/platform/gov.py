"""Governance: NRG, a fixed-supply token; stakes with a lock-up; proposals voted by stake.

    genesis   one transaction: make the NRG mint, mint the whole supply (setting
              gov_supply, default 1,000,000,000, decimals 0) to the treasury (the
              platform authority's account) and drop the mint authority, so the chain
              itself guarantees no NRG is ever minted again
    grant     treasury -> an account (how NRG reaches the community)
    stake     account -> the stake escrow (owner <keys>/nrg-stake.json), locked until
              now + lock_s; unstake moves it back, refused before the lock-up ends
    propose   a change of one market parameter (PARAMS: name -> type and range; a slot
              length must divide an hour) with a voting end and an effective time; the
              proposer must have stake
    vote      yes/no, weight = the voter's stake locked at least until the voting end
              (a stake that could be withdrawn before the count does not vote); one
              vote per account; refused with no such stake and after the voting end.
              On chain: a memo signed by the voter's own key
    tick(now) decides proposals whose voting ended (passed: yes > no and
              yes + no >= quorum, the setting gov_quorum), once no vote cast in time
              is still on its way (waiting for its signature or the chain), and, at
              their effective time,
              writes the passed value to the hub's controls table (hub/store/schema.py
              V4: name "market.<param>", by "governance:<proposal>") - recorded in the
              same transaction that marks the proposal executed

Stake, unstake, propose and vote are the participant's own commands: each is a
transaction whose memo (and any transfer from its account) the participant signs
(signing.py); the platform's keys sign only genesis, grants and, as the escrow's owner,
an unstake the staker's memo asks for.

NRG amounts move only through gov_moves (double entry: src -> dst), so every account's
balance in the store is sum(in) - sum(out), which reconcile() compares with the chain.
"""

import json
import time

from hub.integrations.platform.chain_ops import (
    create_mint_ixs,
    drop_mint_authority_ix,
    memo,
    mint_info,
    mint_to_ixs,
    pk,
    transfer_ixs,
)
from hub.integrations.platform.engine import Operation, PlatformError
from hub.integrations.platform.rec import MINT_RENT
from hub.integrations.settlement.transactions import ata

PARAMS = {  # what a proposal may change: (type, low, high)
    "slot_s": (int, 60, 3600),
    "p_con": (float, 0.0, 100.0),
    "k": (float, 0.01, 20.0),
    "p_balance": (float, 0.0, 500.0),
}


def _amount(value, name="amount"):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlatformError("%s must be a whole number of NRG >= 1" % name)
    return value


class Gov:
    def __init__(self, engine, store, settings, clock=time.time):
        self.engine, self.keys, self.clock = engine, engine.keys, clock
        self.store = store  # passed proposals become the hub's controls (Store.set_control)
        self.supply = int(settings.get("gov_supply", 1_000_000_000))
        self.quorum = int(settings.get("gov_quorum", 1))
        for op in (Genesis(self), Grant(self), Stake(self), Unstake(self), Propose(self),
                   Vote(self)):  # fmt: skip
            engine.register(op)

    def rows(self, sql, params=()):
        return self.engine.rows(sql, params)

    @property
    def mint(self):
        row = self.rows("SELECT mint FROM gov_token")
        if not row:
            raise PlatformError("NRG does not exist yet: run gov genesis first")
        return pk(row[0]["mint"])

    @property
    def escrow(self):
        return self.keys.pubkey("nrg-stake")

    def balances(self, conn=None):
        conn = conn or self.engine.conn
        out = {}
        for src, dst, units in conn.execute("SELECT src, dst, units FROM gov_moves"):
            if src:
                out[src] = out.get(src, 0) - units
            out[dst] = out.get(dst, 0) + units
        return out

    def weight(self, conn, owner, until):
        return conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM gov_stakes WHERE account = ? AND "
            "released_by IS NULL AND locked_until >= ?",
            (owner, until),
        ).fetchone()[0]

    # --- commands ----------------------------------------------------------------------

    async def genesis(self):
        return await self.engine.run("nrg-genesis", Genesis.kind, {"supply": self.supply})

    async def grant(self, command, account, amount):
        return await self.engine.run(command, Grant.kind, {"account": account, "amount": amount})

    # A participant's commands: `wallet` is its own (else the result is a signing request).

    async def stake(self, command, account, amount, lock_s, wallet=None):
        args = {"account": account, "amount": amount, "lock_s": lock_s}
        return await self.engine.run(command, Stake.kind, args, wallet)

    async def unstake(self, command, account, stake, wallet=None):
        args = {"account": account, "stake": stake}
        return await self.engine.run(command, Unstake.kind, args, wallet)

    async def propose(self, command, account, param, value, voting_s, effective_s, wallet=None):
        args = {"account": account, "param": param, "value": value, "voting_s": voting_s,
                "effective_s": effective_s}  # fmt: skip
        return await self.engine.run(command, Propose.kind, args, wallet)

    async def vote(self, command, account, proposal, yes, wallet=None):
        args = {"account": account, "proposal": proposal, "yes": bool(yes)}
        return await self.engine.run(command, Vote.kind, args, wallet)

    def tick(self, now=None):
        """Decide ended votes and execute passed proposals that are due. -> [changes]."""
        now, changes = self.clock() if now is None else now, []
        with self.engine.write() as conn:
            voting = [s for (s,) in conn.execute(
                "SELECT subject FROM platform_holds WHERE subject LIKE 'vote on %'")]  # fmt: skip
            for (pid,) in conn.execute(
                "SELECT id FROM gov_proposals WHERE status = 'open' AND voting_ends <= ?",
                (now,),
            ).fetchall():
                if any(s.startswith("vote on %s by " % pid) for s in voting):
                    continue  # a vote cast in time is still on its way: counted first
                yes, no = conn.execute(
                    "SELECT coalesce(sum(CASE WHEN yes THEN weight END), 0), "
                    "coalesce(sum(CASE WHEN yes THEN 0 ELSE weight END), 0) "
                    "FROM gov_votes WHERE proposal = ?",
                    (pid,),
                ).fetchone()
                passed = yes > no and yes + no >= self.quorum
                conn.execute(
                    "UPDATE gov_proposals SET status = ?, yes = ?, no = ?, decided_at = ? "
                    "WHERE id = ?",
                    ("passed" if passed else "rejected", yes, no, now, pid),
                )
            for pid, param, value in conn.execute(
                "SELECT id, param, value FROM gov_proposals WHERE status = 'passed' AND "
                "effective_at <= ?",
                (now,),
            ).fetchall():
                # the hub's controls are the store's (in this transaction: it joins it)
                self.store.set_control("market." + param, json.loads(value),
                                       "governance:" + pid, at=now)  # fmt: skip
                conn.execute(
                    "UPDATE gov_proposals SET status = 'executed', executed_at = ? WHERE id = ?",
                    (now, pid),
                )
                changes.append({"proposal": pid, "param": param, "value": json.loads(value)})
        return changes

    def proposals(self):
        return self.rows("SELECT * FROM gov_proposals ORDER BY created_at")

    async def reconcile(self):
        if not self.rows("SELECT 1 FROM gov_token"):
            return []
        diffs, backend = [], self.engine.backend
        supply, _decimals, authority = mint_info(await backend.account_data(self.mint))
        if supply != self.supply or authority is not None:
            diffs.append("nrg: supply %d (want %d), mint authority %s" % (supply, self.supply,
                                                                          authority))  # fmt: skip
        for owner, units in sorted(self.balances().items()):
            chain = await backend.token_balance(ata(pk(owner), self.mint)) or 0
            if chain != units:
                diffs.append("nrg %s: store %d, chain %d" % (owner, units, chain))
        return diffs


class _GovOp(Operation):
    def __init__(self, gov):
        self.gov = gov

    def _owner(self, args):
        return str(self.gov.keys.account(args.get("account")))

    def _move(self, conn, command, src, dst, units, kind):
        conn.execute(
            "INSERT INTO gov_moves (command, src, dst, units, kind) VALUES (?, ?, ?, ?, ?)",
            (command, src, dst, units, kind),
        )


class Genesis(_GovOp):
    kind = "gov.genesis"

    def plan(self, conn, args, command):
        return {"supply": _amount(args["supply"], "supply"),
                "mint": str(self.gov.keys.pubkey("nrg-mint"))}  # fmt: skip

    def instructions(self, p):
        authority, mint = self.gov.keys.authority.pubkey, self.gov.keys.wallet("nrg-mint")
        ixs = [memo("gridbid-gov:genesis:%s:%d" % (p["command"], p["supply"]), authority)]
        ixs += create_mint_ixs(authority, mint.pubkey, authority, 0, MINT_RENT)
        ixs += mint_to_ixs(authority, mint.pubkey, authority, authority, p["supply"], 0)
        ixs.append(drop_mint_authority_ix(mint.pubkey, authority))
        return ixs, [mint]

    def apply(self, conn, command, p, at):
        conn.execute("INSERT INTO gov_token VALUES (1, ?, ?, ?)", (p["mint"], p["supply"], command))
        self._move(conn, command, None, str(self.gov.keys.authority.pubkey), p["supply"],
                   "genesis")  # fmt: skip
        return p


class Grant(_GovOp):
    kind = "gov.grant"

    def plan(self, conn, args, command):
        amount, owner = _amount(args.get("amount")), self._owner(args)
        treasury = str(self.gov.keys.authority.pubkey)
        self.gov.mint  # noqa: B018 - refuses before genesis
        if self.gov.balances(conn).get(treasury, 0) < amount:
            raise PlatformError("the treasury holds less than %d NRG" % amount)
        return {"account": args["account"], "owner": owner, "amount": amount}

    def instructions(self, p):
        authority = self.gov.keys.authority.pubkey
        return [memo("gridbid-gov:grant:%s:%d" % (p["command"], p["amount"]), authority)] + (
            transfer_ixs(authority, authority, pk(p["owner"]), self.gov.mint, p["amount"], 0)
        ), []

    def apply(self, conn, command, p, at):
        treasury = str(self.gov.keys.authority.pubkey)
        self._move(conn, command, treasury, p["owner"], p["amount"], "grant")
        return p


class Stake(_GovOp):
    kind = "gov.stake"

    def plan(self, conn, args, command):
        amount, owner = _amount(args.get("amount")), self._owner(args)
        lock_s = args.get("lock_s")
        if isinstance(lock_s, bool) or not isinstance(lock_s, (int, float)) or lock_s < 0:
            raise PlatformError("lock_s must be a number of seconds >= 0")
        held = self.gov.balances(conn).get(owner, 0)
        if held < amount:
            raise PlatformError("%s holds %d NRG, cannot stake %d" % (args["account"], held,
                                                                       amount))  # fmt: skip
        return {"account": args["account"], "owner": owner, "amount": amount,
                "locked_until": self.gov.clock() + lock_s, "signer": owner}  # fmt: skip

    def instructions(self, p):
        authority, holder = self.gov.keys.authority.pubkey, pk(p["owner"])
        return [memo("gridbid-gov:stake:%s:%d" % (p["command"], p["amount"]), holder)] + (
            transfer_ixs(authority, holder, self.gov.escrow, self.gov.mint, p["amount"], 0)
        ), []

    def apply(self, conn, command, p, at):
        self._move(conn, command, p["owner"], str(self.gov.escrow), p["amount"], "stake")
        conn.execute(
            "INSERT INTO gov_stakes (command, account, amount, locked_until) VALUES (?, ?, ?, ?)",
            (command, p["owner"], p["amount"], p["locked_until"]),
        )
        return p


class Unstake(_GovOp):
    kind = "gov.unstake"

    def plan(self, conn, args, command):
        owner = self._owner(args)
        row = conn.execute(
            "SELECT account, amount, locked_until, released_by FROM gov_stakes WHERE command = ?",
            (args.get("stake"),),
        ).fetchone()
        if row is None or row[0] != owner:
            raise PlatformError("%s has no stake %r" % (args["account"], args.get("stake")))
        if row[3] is not None:
            raise PlatformError("stake %r was already withdrawn" % args["stake"])
        if self.gov.clock() < row[2]:
            raise PlatformError("stake %r is locked until %.0f" % (args["stake"], row[2]))
        return {"account": args["account"], "owner": owner, "amount": row[1],
                "stake": args["stake"], "signer": owner}  # fmt: skip

    def holds(self, p):
        return ["stake %s" % p["stake"]]

    def instructions(self, p):
        # The escrow pays it back; the staker's signed memo asks for it.
        authority, escrow = self.gov.keys.authority.pubkey, self.gov.keys.wallet("nrg-stake")
        return [memo("gridbid-gov:unstake:%s:%d" % (p["command"], p["amount"]), pk(p["owner"]))] + (
            transfer_ixs(authority, escrow.pubkey, pk(p["owner"]), self.gov.mint, p["amount"], 0)
        ), [escrow]

    def apply(self, conn, command, p, at):
        self._move(conn, command, str(self.gov.escrow), p["owner"], p["amount"], "unstake")
        conn.execute("UPDATE gov_stakes SET released_by = ? WHERE command = ?",
                     (command, p["stake"]))  # fmt: skip
        return p


class Propose(_GovOp):
    kind = "gov.propose"

    def plan(self, conn, args, command):
        owner, param = self._owner(args), args.get("param")
        if param not in PARAMS:
            raise PlatformError("a proposal may change %s, not %r" % (", ".join(PARAMS), param))
        kind, low, high = PARAMS[param]
        value = args.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high
        ) or (kind is int and value != int(value)):  # fmt: skip
            raise PlatformError("%s must be a %s in %s..%s" % (param, kind.__name__, low, high))
        if param == "slot_s" and 3600 % value:
            # Slots start on multiples of their length (protocol/contract.py): lengths that
            # divide an hour share a boundary within the hour, where the grid can change.
            raise PlatformError("slot_s must divide an hour (60, 120, 300, 600, 900, ... 3600)")
        voting_s, effective_s = args.get("voting_s"), args.get("effective_s")
        if not (isinstance(voting_s, (int, float)) and voting_s > 0 and
                isinstance(effective_s, (int, float)) and effective_s >= voting_s):  # fmt: skip
            raise PlatformError("voting_s must be > 0 and effective_s >= voting_s")
        now = self.gov.clock()
        if self.gov.weight(conn, owner, now) < 1:
            raise PlatformError("%s has no stake: only stakers propose" % args["account"])
        return {"account": args["account"], "owner": owner, "param": param,
                "value": kind(value), "voting_ends": now + voting_s,
                "effective_at": now + effective_s, "created_at": now, "signer": owner}  # fmt: skip

    def instructions(self, p):
        text = "gridbid-gov:propose:%s:%s:%s" % (p["command"], p["param"], p["value"])
        return [memo(text, pk(p["owner"]))], []

    def apply(self, conn, command, p, at):
        conn.execute(
            "INSERT INTO gov_proposals (id, proposer, param, value, voting_ends, effective_at, "
            "status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
            (command, p["owner"], p["param"], json.dumps(p["value"]), p["voting_ends"],
             p["effective_at"], p["created_at"]),
        )  # fmt: skip
        return p


class Vote(_GovOp):
    kind = "gov.vote"

    def plan(self, conn, args, command):
        owner, pid = self._owner(args), args.get("proposal")
        row = conn.execute(
            "SELECT voting_ends, status FROM gov_proposals WHERE id = ?", (pid,)
        ).fetchone()
        if row is None:
            raise PlatformError("there is no proposal %r" % (pid,))
        if self.gov.clock() >= row[0] or row[1] != "open":
            raise PlatformError("voting on proposal %r closed at %.0f" % (pid, row[0]))
        if conn.execute("SELECT 1 FROM gov_votes WHERE proposal = ? AND account = ?",
                        (pid, owner)).fetchone():  # fmt: skip
            raise PlatformError("%s already voted on proposal %r" % (args["account"], pid))
        weight = self.gov.weight(conn, owner, row[0])
        if weight < 1:
            raise PlatformError("%s has no stake locked past the vote's end: no vote"
                                % args["account"])  # fmt: skip
        return {"account": args["account"], "owner": owner, "proposal": pid,
                "yes": bool(args["yes"]), "weight": weight, "signer": owner}  # fmt: skip

    def holds(self, p):  # tick() counts no proposal while one of its votes is held
        return ["vote on %s by %s" % (p["proposal"], p["owner"])]

    def instructions(self, p):
        choice = "yes" if p["yes"] else "no"
        text = "gridbid-gov:vote:%s:%s:%s:%d" % (p["command"], p["proposal"], choice, p["weight"])
        return [memo(text, pk(p["owner"]))], []

    def apply(self, conn, command, p, at):
        conn.execute(
            "INSERT INTO gov_votes VALUES (?, ?, ?, ?, ?, ?)",
            (p["proposal"], p["owner"], int(p["yes"]), p["weight"], command, at),
        )
        return p
