"""The settlement integration in a running hub: wallets and backend set up from the
[settlement] settings, and the uploader run in the background of the hub's event loop.

It wakes every poll_s, and at once when a contract reaches a final state (a "contract"
event). The store is the truth, not the events: after a restart every final contract
in no batch is found again by its window (uploader.plan). Rounds never overlap (a lock):
two rounds signing the same part at once is exactly the double payment the journal
exists to prevent. LiteSVM calls are synchronous but short; the backend yields to the
loop after each transaction, so a large batch does not hold the hub's loop for long.
"""

import asyncio
import logging
import traceback
from pathlib import Path

from solders.pubkey import Pubkey

from hub.integrations.settlement import CLEARING, journal, provision, records, wallets
from hub.integrations.settlement.backends import BackendError, LiteSVMBackend
from hub.integrations.settlement.margin import Margin
from hub.integrations.settlement.provision import nonce_wallets
from hub.integrations.settlement.uploader import Uploader
from hub.integrations.settlement.withdrawals import Withdrawals
from transport import tasks

log = logging.getLogger(__name__)


class Settlement:
    name = "settlement"

    def __init__(self, hub, settings, chain=None):
        self.hub, self.settings, self.chain = hub, settings, chain
        self.uploader = None
        self.margin = None  # the clearing house's margin accounts (margin.py)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task = None
        self._unsubscribe = None
        self._last_error = None
        self.reachable = False  # the last round reached the chain (/metrics' link_up)

    async def open(self):
        s, hub = self.settings, self.hub
        litesvm = s["backend"] == "litesvm"
        folder = Path(s["wallets"])
        if litesvm:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The market as clearing house (margin.py): its own wallet pays every owner, from
        # the margins aggregators deposit with theirs. The hub holds no aggregator's wallet.
        clearing = wallets.read_or_create(wallets.clearing_path(folder), litesvm)
        payers = {CLEARING: clearing}
        owners = wallets.Owners(
            wallets.owners_map(s["owners"]),
            s["owners_file"] or (folder / "owners.json" if litesvm else None),
            make=folder / "owners" if litesvm else None,
        )
        nonces = nonce_wallets(folder, payers) if s["durable_nonce"] else None
        faucet = None
        if litesvm:
            mint, backend = self._rebuild(folder, payers, nonces)
            units = s["fund_credits"] * 10 ** s["decimals"]
            authority, mint_wallet = provision.mint_wallets(folder)

            def faucet(owner):
                return provision.fund(self.chain, authority, mint_wallet, owner, units,
                                      s["decimals"])  # fmt: skip
        else:
            from hub.integrations.settlement.rpc_backend import RpcBackend

            mint = Pubkey.from_string(s["mint"])
            backend = RpcBackend(s["backend"], timeout_s=s["timeout_s"])
            log.info("settlement: RPC %s, mint %s" % (s["backend"], mint))
        if nonces is not None:
            nonces = {str(payers[k].pubkey): w for k, w in nonces.items()}
        self.uploader = Uploader(
            hub.store, backend, payers, owners, mint, name=hub.cfg["name"],
            decimals=s["decimals"], cents_per_credit=s["cents_per_credit"],
            batch_s=s["batch_s"], max_batch=s["max_batch"], nonces=nonces,
            reconcile_s=s["reconcile_days"] * 86400, resend_s=s["poll_s"],
            emit=lambda **fields: hub.events.emit("settlement", **fields),
        )  # fmt: skip
        paid_back = Withdrawals(hub.store, backend, mint, clearing, hub.cfg["name"],
                                s["decimals"])  # fmt: skip
        self.margin = Margin(hub.store, backend, mint, clearing.pubkey, hub.cfg["name"],
                             s["decimals"], self.uploader.per_cent, faucet=faucet,
                             withdrawals=paid_back)  # fmt: skip
        hub.exchange.use_margin(self.margin)
        self._unsubscribe = hub.events.subscribe(self._on_event)
        self._task = tasks.keep("settlement", self._run)

    def _rebuild(self, folder, payers, nonces):
        """LiteSVM: the chain provisioned and the journals replayed (rebuild.py), so the
        payments made before this start are on it again. -> (mint, backend)"""
        from hub.integrations.settlement import rebuild

        s, hub = self.settings, self.hub
        self.chain, mint, replayed, failed = rebuild.start(
            hub.store.db.conn, folder, payers, 0, s["decimals"],
            nonces=nonces, chain=self.chain, block_s=0.4,
        )  # fmt: skip
        log.info("settlement: LiteSVM in-process chain: its mint, the clearing account, and a "
                 "faucet of %d credits per aggregator wallet (keys in %s, mode 0600)"
                 % (s["fund_credits"], folder))  # fmt: skip
        log.warning("settlement: LiteSVM chain rebuilt from the journal: %d transactions "
                "(%d did not replay)" % (replayed, failed))  # fmt: skip
        return mint, LiteSVMBackend(self.chain)

    def hosted_wallet(self, key_id, name):
        """A hosted aggregator's MarginKeeper: its wallet (<wallets>/aggregator-<id>.json,
        made on LiteSVM) is in the hub's folder because it is the operator's own aggregator.
        An independent aggregator's never is."""
        from aggregator.margin import MarginKeeper
        from aggregator.wallet import read

        path = wallets.aggregator_path(self.settings["wallets"], key_id)
        if self.settings["backend"] == "litesvm" and not path.exists():
            wallets.create(path)
        return MarginKeeper(name, read(path), self.settings["margin_credits"])

    def _on_event(self, event):
        if event["kind"] == "contract" and event.get("state") in records.FINAL_STATES:
            self._wake.set()

    async def _run(self):
        while True:
            await self.round()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings["poll_s"])
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def round(self):
        """One uploader round; errors are logged (once per kind) and tried again later.
        -> the round's summary, or None when it failed."""
        async with self._lock:
            try:
                await self.margin.check()
                result = await self.uploader.cycle()
            except BackendError as exc:
                self.reachable = False
                self._say("settlement: chain unreachable, trying again: %s" % exc)
                return None
            except Exception as exc:  # a bug must show, and not end settlement for good
                self._say("settlement: round failed: %r\n%s" % (exc, traceback.format_exc()))
                return None
        self._last_error, self.reachable = None, True
        return result

    def _say(self, text):
        if text != self._last_error:
            self._last_error = text
            log.warning(text)

    async def flush(self, timeout_s=30.0):
        """Rounds until every final contract is in a batch and every batch is paid, or
        timeout_s (a window is batched once it has ended: up to batch_s). -> status()"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            result = await self.round()
            if (result is not None and result["open"] == 0
                    and journal.waiting(self.hub.store, records.FINAL_STATES) == 0):  # fmt: skip
                break
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        return self.status()

    def status(self):
        """{"batches": {status: n}, "contracts": settled, "amount": base units,
        "transactions": {status: n}, "waiting": final contracts in no batch yet}."""
        counts = journal.counts(self.hub.store)
        counts["waiting"] = journal.waiting(self.hub.store, records.FINAL_STATES)
        return counts

    async def balances(self):
        """Credits: {"clearing": held by the clearing account, "aggregators": {name: their
        margin account, in credits}, "owners": {device: credits}}."""
        up = self.uploader
        scale = 10**up.decimals
        names = self.hub.aggregators()  # admitted since it started too
        margins = {names.get(k, "aggregator-%d" % k): self.margin.in_credits(a)
                   for k, a in self.margin.accounts().items()}  # fmt: skip
        owners = {d: await up.balance(key) / scale for d, key in sorted(up.owners.known.items())}
        clearing = await up.balance(up.payers[CLEARING].pubkey) / scale
        return {"clearing": clearing, "aggregators": margins, "owners": owners}

    async def close(self):
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        async with self._lock:  # a round in flight ends first
            if self.uploader is not None:
                await self.uploader.backend.close()
