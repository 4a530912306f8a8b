"""A settlement test world: a real SQLite store with final contracts, the in-process
chain (LiteSVM running the real SPL programs), aggregators' wallets and owners' keys,
and what the balances must be, computed here independently of hub/integrations/settlement/records.py
(fractions, not decimals)."""

import collections
import time
from fractions import Fraction

from hub.integrations.settlement import records, wallets
from hub.integrations.settlement.backends import LiteSVMBackend
from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.provision import fund, mint_wallets, provision
from hub.integrations.settlement.uploader import Uploader
from hub.store import Store
from protocol import contract

SLOT_S, GATE_S, BATCH_S = 60, 20, 300
BASE = 1_700_000_100  # a multiple of BATCH_S: windows of 5 slots, long closed by now
AGGREGATORS = (1, 2, 3)
FUND = 1_000_000  # credits each aggregator starts with
CREDIT = 10**6  # base units per credit (6 decimals)

# state -> how it is reached after Received and Confirmed: [(state, by), ...]
PATHS = {
    "CompletedSuccess": [("Active", "device"), ("CompletedSuccess", "device")],
    "CompletedFailureByScada": [("Active", "device"), ("CompletedFailureByScada", "device")],
    "CompletedFailureByAtn": [("Active", "device"), ("CompletedFailureByAtn", "buyer")],
    "TerminatedByScada": [("TerminatedByScada", "device")],
    "TerminatedByAtn": [("TerminatedByAtn", "buyer")],
    "CompletedUnknownOutcome": [("CompletedUnknownOutcome", "buyer")],
    "Active": [("Active", "device")],  # still live
}


def expected_kwh(state, promised, delivered):
    """The rule, restated: metered energy up to the promise; an unmetered success the
    promise; anything else unmetered nothing."""
    if delivered is not None:
        return min(Fraction(repr(delivered)), promised)
    return promised if state == "CompletedSuccess" else Fraction(0)


def expected_amount(price, kwh, per_cent=10_000):
    value = Fraction(repr(price)) * kwh * per_cent
    return int(value + Fraction(1, 2)) if value >= 0 else None  # half up


class World:
    def __init__(self, tmp, chain=None, owners_make=True, valid_blocks=150, faucet=False):
        self.tmp = tmp
        self.path = tmp / "hub.sqlite"
        self.store = Store(self.path, synchronous="NORMAL")
        self.chain = chain or Chain(valid_blocks=valid_blocks)
        self.folder = tmp / "wallets"
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.payers = wallets.payers(self.folder, AGGREGATORS, create_missing=True)
        # faucet: the aggregators' wallets are funded by the margin faucet, as a hub's are
        # (margin()), so that a hub's rebuild funds them again; else by provisioning.
        self.faucet = faucet
        self.mint = provision(self.chain, self.folder, {} if faucet else self.payers, FUND, 6)
        self.owners = wallets.Owners(
            {}, self.folder / "owners.json", make=self.folder / "owners" if owners_make else None
        )
        self.expected = collections.Counter()  # device -> base units owed
        self.contracts = []  # ids of final contracts
        self.devices = set()
        self.seq = 0
        self.events = []
        self.clearing = None  # the clearing house's Wallet, once margin pays (fund_margin)
        self.deposited = 0

    def add(self, device, buyer, start, kwh, price, state="CompletedSuccess", delivered=None):
        """A contract of `kwh` at `price` c/kWh driven to `state`. -> its id."""
        if device not in self.devices:
            self.store.add_device(device, device, "127.0.0.1:1")
            self.devices.add(device)
        self.seq += 1
        deal = contract.purchase(device, buyer, self.seq, SLOT_S, GATE_S, "hub", start, kwh, 1.0)
        self.store.record_contract(deal, device, buyer, price)
        self.store.advance_contract(deal.contract_id, "Received", "device")
        self.store.advance_contract(deal.contract_id, "Confirmed", "buyer", confirm_id=self.seq)
        for i, (step, by) in enumerate(PATHS[state]):
            last = i == len(PATHS[state]) - 1 and state != "Active"
            self.store.advance_contract(deal.contract_id, step, by,
                                        delivered_kwh=delivered if last else None)  # fmt: skip
        if state != "Active":
            promised = Fraction(abs(deal.avg_power_watts) * deal.duration_s, 3_600_000)
            self.expected[device] += expected_amount(
                price, expected_kwh(state, promised, delivered)
            )
            self.contracts.append(deal.contract_id)
        return deal.contract_id

    def fill(self, windows=2, devices=10, seed=0):
        """A mix of every final state over `windows` windows, several contracts per
        (buyer, battery) pair per window (they add up in one transfer)."""
        import random

        rng = random.Random(seed)
        states = [s for s in PATHS if s != "Active"]
        for w in range(windows):
            for slot in range(BATCH_S // SLOT_S):
                start = BASE + w * BATCH_S + slot * SLOT_S
                for device in range(101, 101 + devices):
                    buyer = AGGREGATORS[(device + slot) % len(AGGREGATORS)]
                    kwh = round(rng.uniform(0.05, 2.0), 4)
                    state = rng.choice(states + ["CompletedSuccess"] * 3)
                    metered = round(kwh * rng.uniform(0.3, 1.2), 6)  # over the promise too
                    delivered = None if rng.random() < 0.3 else metered
                    self.add(device, buyer, start, kwh, round(rng.uniform(12, 24), 3), state,
                             delivered)  # fmt: skip

    def margin(self):
        """The clearing house's margin on this world's chain, as a hub's Settlement makes
        it (its clearing account provisioned), for deposits before a Settlement runs."""
        from hub.integrations.settlement import schema
        from hub.integrations.settlement.margin import Margin
        from hub.integrations.settlement.withdrawals import Withdrawals

        schema.migrate(self.store.db)
        clearing = wallets.read_or_create(wallets.clearing_path(self.folder), True)
        provision(self.chain, self.folder, {0: clearing}, 0, 6)

        authority, mint = mint_wallets(self.folder)

        def faucet(owner):
            return fund(self.chain, authority, mint, owner, FUND * CREDIT, 6)

        backend = LiteSVMBackend(self.chain)
        paid_back = Withdrawals(self.store, backend, self.mint, clearing, "hub", 6)
        return Margin(self.store, backend, self.mint, clearing.pubkey, "hub", 6, 10_000,
                      faucet=faucet if self.faucet else None, withdrawals=paid_back)  # fmt: skip

    async def fund_margin(self, margin, credits=1000):
        """Each aggregator deposits `credits` of margin from its own wallet, as its process
        does (aggregator/wallet.py, aggregator/margin.py); the clearing house pays from now
        on (hub/integrations/settlement/margin.py)."""
        import base64

        from aggregator.wallet import Wallet

        for key_id, wallet in self.payers.items():
            if self.faucet:
                await margin.faucet(key_id, wallet.pubkey)
            tx = Wallet(wallet.keypair).deposit(margin.terms(key_id), credits * CREDIT,
                                                await margin.blockhash())  # fmt: skip
            done = await margin.deposit(key_id, base64.b64encode(bytes(tx)).decode())
            assert done["status"] == "finalized", done
            self.deposited += credits * CREDIT
        self.clearing = wallets.read(wallets.clearing_path(self.folder))

    def uploader(self, store=None, backend=None, **kw):
        kw.setdefault("batch_s", BATCH_S)
        kw.setdefault("emit", lambda **f: self.events.append(f))
        payers = {0: self.clearing} if self.clearing is not None else self.payers
        return Uploader(store or self.store, backend or LiteSVMBackend(self.chain), payers,
                        self.owners, self.mint, name="hub", **kw)  # fmt: skip

    def reopen(self):
        """A new connection to the store, as a restarted hub has."""
        return Store(self.path, synchronous="NORMAL")

    def balances(self):
        from hub.integrations.settlement.transactions import ata

        # Owners made by another process or Owners instance are in the file.
        known = {**wallets.read_owners(self.folder / "owners.json"), **self.owners.known}
        return {
            d: self.chain.token_balance(ata(known[d], self.mint)) or 0
            for d in sorted(self.devices) if d in known
        }  # fmt: skip

    def spent(self):
        """Base units each aggregator paid out."""
        from hub.integrations.settlement.transactions import ata

        if self.clearing is not None:  # the clearing house paid, from the margin
            held = self.chain.token_balance(ata(self.clearing.pubkey, self.mint))
            return {0: self.deposited - held}
        return {k: FUND * CREDIT - self.chain.token_balance(ata(w.pubkey, self.mint))
                for k, w in self.payers.items()}  # fmt: skip

    def landed_parts(self):
        """Counter of (batch id, part) over every successful gridbid transaction on chain."""
        seen = collections.Counter()
        sigs = set()
        payers = list(self.payers.values()) + ([self.clearing] if self.clearing else [])
        for wallet in payers:
            for x in self.chain.signatures_for_address(wallet.pubkey, limit=10**9):
                parsed = records.parse_memo(x.memo)
                if x.err is None and parsed and x.signature not in sigs:
                    sigs.add(x.signature)
                    seen[parsed[0], parsed[2]] += 1
        return seen

    def assert_settled_exactly_once(self):
        """Every final contract in a finalized batch; every owner holds exactly what the
        contracts owe; no part landed twice; the payers paid exactly the total."""
        rows = self.store.db.execute(
            "SELECT i.contract, s.status FROM settlement_items i JOIN settlements s "
            "ON s.id = i.batch"
        ).fetchall()
        assert sorted(c for c, _s in rows) == sorted(self.contracts), "lost or extra trades"
        assert {s for _c, s in rows} == {"finalized"}
        assert self.balances() == {d: self.expected[d] for d in sorted(self.devices)}
        landed = self.landed_parts()
        assert landed and max(landed.values()) == 1, "a part landed twice"
        parts = self.store.db.execute("SELECT batch, part FROM settlement_parts").fetchall()
        assert set(landed) == {tuple(p) for p in parts}
        assert sum(self.spent().values()) == sum(self.expected.values())


class FakeExchange:
    """The one call settlement makes on the hub's Exchange (a stand-in: the market's own
    use of margin runs on the real one, tests/hub/market/test_margin.py)."""

    margin = None

    def use_margin(self, margin):
        self.margin = margin


async def run_until_done(uploader, rounds=10):
    for _ in range(rounds):
        result = await uploader.cycle()
        if result["open"] == 0 and result["planned"] == 0:
            return result
    raise AssertionError("not settled after %d rounds: %r" % (rounds, result))


def now():
    return time.time()


def sync(test):
    """Run an async test function in its own event loop (no asyncio plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper
