"""A platform test world: a real SQLite store, the in-process chain (LiteSVM running the
real SPL Token, ATA and Memo programs), settlement's credit mint (provisioned with no
credits: every credit in circulation goes through the platform's ledger), and contracts
with metered energy driven through the store's real contract rules."""

import asyncio

from hub.platform import Keys, Platform
from hub.settlement.backends import LiteSVMBackend
from hub.settlement.chain import Chain
from hub.settlement.provision import SOL, provision
from hub.store import Store
from protocol import contract

SLOT_S, GATE_S = 60, 20
BASE = 1_700_000_100  # 2023-11-14 UTC
SOURCES = {101: "solar", 102: "wind", 103: "grid", 104: "solar"}


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
        self.settings = settings = {"sources": sources, "kwh_per_certificate": kwh_per_certificate,
                    "gov_supply": gov_supply, "gov_quorum": 10}  # fmt: skip
        self.now = BASE + 10**7  # the governance clock, moved by the tests
        self.platform = Platform(self.store, self.backend, self.keys, self.mint, settings,
                                 clock=lambda: self.now)  # fmt: skip
        self.seq = 0

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
