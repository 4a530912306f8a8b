"""A platform test world: a real SQLite store, the in-process chain (LiteSVM running the
real SPL Token, ATA and Memo programs), settlement's credit mint (provisioned with no
credits: every credit in circulation goes through the platform's ledger), and contracts
with metered energy driven through the store's real contract rules."""

import asyncio
from fractions import Fraction

from hub.integrations.platform.chain_ops import RESERVED, Keys
from hub.integrations.platform.layer import Platform
from hub.integrations.settlement import wallets
from hub.integrations.settlement.backends import LiteSVMBackend
from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.provision import SOL, provision
from hub.store import Store
from protocol import contract

SLOT_S, GATE_S = 60, 20
BASE = 1_700_000_100  # 2023-11-14 UTC
SOURCES = {101: "solar", 102: "wind", 103: "grid", 104: "solar"}
PARTICIPANTS = ("alice", "bob", "carol", "dave", "aggregator-1") + tuple(
    "owner-%d" % d for d in SOURCES
)


class World:
    def __init__(self, tmp, sources=SOURCES, kwh_per_certificate=1.0, gov_supply=1_000_000,
                 chain=None):  # fmt: skip
        self.tmp = tmp
        self.store = Store(tmp / "hub.sqlite", synchronous="NORMAL")
        self.chain = chain or Chain()
        self.keys = Keys(tmp / "wallets", make=True)
        self.mint = provision(self.chain, tmp / "wallets", {}, 0, 6)
        self.chain.airdrop(self.keys.authority.pubkey, 1000 * SOL)
        self.backend = LiteSVMBackend(self.chain)
        # The participants' own wallets, on their own machines (here: a folder the
        # platform never reads); the operator's address book holds their public keys.
        self.participants = tmp / "participants"
        self.participants.mkdir(exist_ok=True)
        for name in PARTICIPANTS:
            self.signer(name)
        self.settings = settings = {"sources": sources, "kwh_per_certificate": kwh_per_certificate,
                    "gov_supply": gov_supply, "gov_quorum": 10}  # fmt: skip
        self.now = BASE + 10**7  # the governance clock, moved by the tests
        self.platform = Platform(self.store, self.backend, self.keys, self.mint, settings,
                                 clock=lambda: self.now)  # fmt: skip
        self.seq = 0

    def signer(self, name):
        """Participant `name`'s own wallet (made on first use, named in the address book)."""
        path = self.participants / ("%s.json" % name)
        wallet = wallets.read(path) if path.exists() else wallets.create(path)
        self.keys.add(name, wallet.pubkey)
        return wallet

    def key(self, name):
        """The public key of one of the platform's own wallets or of an account."""
        own = name.startswith(RESERVED)
        return self.keys.pubkey(name) if own else self.keys.account(name)

    def platform_over(self, backend, store=None):
        """Another Platform over `backend` (e.g. RPC) and `store` (default: this one's)."""
        return Platform(store or self.store, backend, self.keys, self.mint, self.settings,
                        clock=lambda: self.now)  # fmt: skip

    def run(self, coro):
        return asyncio.run(coro)

    def contract(self, device, start, kwh, delivered, state="CompletedSuccess"):
        """A contract of `kwh` driven to a final `state` with `delivered` metered kWh."""
        self.store.add_device(device, device, "127.0.0.1:1")
        self.seq += 1
        deal = contract.purchase(device, 1, self.seq, SLOT_S, GATE_S, "hub", start, kwh, 1.0)
        self.store.record_contract(deal, device, 1, 10.0)
        self.store.advance_contract(deal.contract_id, "Received", "device")
        self.store.advance_contract(deal.contract_id, "Confirmed", "buyer", confirm_id=self.seq)
        self.store.advance_contract(deal.contract_id, "Active", "device")
        self.store.advance_contract(deal.contract_id, state, "device", delivered_kwh=delivered)
        return deal.contract_id

    def close(self):
        self.store.close()


# --- a store with one of each incentive (test_platform_incentives, the page's views) ---

EPOCH_S = 3600
EPOCH = BASE // EPOCH_S * EPOCH_S  # BASE is inside it, 15 minutes after its start
RULES = {
    "epoch_s": EPOCH_S,
    "conservation": {"rate": 30.0, "cap": 50},
    "demand_response": {"rate": 10.0, "cap": 15},
    "liquidity": {"rate": 4.0, "cap": 100},
    "budget": 1000,
    "baseline_epochs": 2,
}


def fill(w):
    s = w.store
    # conservation: 101 charged at 2 kW the epoch before, 1 kW in this one (a reading a
    # minute: the epoch before is held whole, to this one's first reading; this one's
    # last reading has no next one yet: 59 minutes held, 98 %)
    s.add_device(101, 101, "127.0.0.1:1")
    for start, kw in ((EPOCH - EPOCH_S, -2.0), (EPOCH, -1.0)):
        for j in range(60):
            s.record_telemetry(101, power_kw=kw, at=start + 60 * j)
    # 104 has readings for half of this epoch only: a gap is no saving
    s.add_device(104, 104, "127.0.0.1:1")
    for j in range(60):
        s.record_telemetry(104, power_kw=-2.0, at=EPOCH - EPOCH_S + 60 * j)
    for j in range(30):
        s.record_telemetry(104, power_kw=0.0, at=EPOCH + 60 * j)
    # demand response: a high-signal slot (20 c > p_balance 15) and a low one (10 c)
    high = w.contract(102, BASE, 1.0, 0.8)
    w.contract(103, BASE, 2.0, 3.0)  # more than promised: the promise counts (2 kWh)
    low = w.contract(102, BASE + 60, 1.0, 1.0)
    s.record_price_signal(20.0, 10, 5, slot=s.contract(high)["slot"], at=BASE - 30)
    s.record_price_signal(10.0, 5, 10, slot=s.contract(low)["slot"], at=BASE + 30)
    # liquidity in a slot cleared at 16 c: what rested in the book within 20 %
    slot = s.contract(w.contract(101, BASE + 600, 0.1, None))["slot"]
    s.record_bid(slot, 0, "bid", 1, 16.0, 2.0)  # aggregator 1: 1.5 rests
    s.record_bid(slot, 1, "ask", 101, 30.0, 1.0)  # far above: earns nothing
    s.record_bid(slot, 2, "ask", 102, 14.0, 1.0)  # 0.5 rests, within the band
    s.record_trades("clr-1", slot, [(0, 1, "bid", 0.5), (2, 102, "ask", 0.5)], 16.0)


def expected():
    saved = 2 * 1 - 1 * Fraction(59, 60)  # kWh: 2 kW held an hour, 1 kW for 59 minutes
    return {
        ("owner-101", "conservation"): int(30 * saved),  # 30
        ("owner-102", "demand_response"): int(10 * Fraction(8, 10)),  # 8
        ("owner-103", "demand_response"): 15,  # 10 x 2 = 20, capped at 15
        ("aggregator-1", "liquidity"): int(4 * Fraction(3, 2)),  # 6
        ("owner-102", "liquidity"): int(4 * Fraction(1, 2)),  # 2
    }
