"""Keeping this aggregator's margin in a market that settles on chain.

A market that settles (its welcome carries "margin" terms) takes a bid only when the
aggregator's free margin covers it (hub/market/funding.py). The keeper keeps the margin
at its target (aggregator.toml margin_credits), at every welcome and after every
clearing: it tops it up with its own wallet (wallet.py) when the free margin falls below
half of the target, and asks for the excess back when the free margin is more than half
again above it (margin_credits = 0: everything free comes back to the wallet it was
deposited from, e.g. before leaving a market).

    margin      how much is free
    faucet      (a test chain only: LiteSVM in the hub) credits for this wallet, once
    blockhash   to sign with
    deposit     the signed transfer: journaled here first (the store's deposits), so a
                restart sends the same bytes again and the market credits them once
    withdraw    the excess back (an id of its own: a retry is the same withdrawal)
"""

import asyncio
import base64
import logging
import uuid

from transport import tasks

log = logging.getLogger(__name__)


class MarginKeeper:
    def __init__(self, name, wallet, credits, store=None):
        self.name, self.wallet, self.credits, self.store = name, wallet, credits, store
        self._busy = set()  # markets being topped up

    def keep(self, tell, link, terms):
        """Top up in the background (one round per market at a time)."""
        if link.market in self._busy:
            return None
        self._busy.add(link.market)
        task = tasks.watch(
            asyncio.ensure_future(self._keep(tell, link, terms)),
            "%s margin in market %s" % (self.name, link.market),
        )
        task.add_done_callback(lambda _t: self._busy.discard(link.market))
        return task

    async def _keep(self, tell, link, terms):
        market, scale = link.market, 10 ** terms["decimals"]
        try:
            for signature, raw in self.store.unanswered(market) if self.store else ():
                await self._resend(tell, link, signature, raw)  # a restart: the same bytes
            account = await self._ask(tell, link, {"type": "margin"})
            target = int(self.credits * scale)
            want = target - account["account"]["free"]
            if -want > target // 2:
                await self._withdraw(tell, link, -want, scale)
            if want <= target // 2:
                return
            if terms.get("faucet"):
                await self._ask(tell, link, {"type": "faucet", "wallet": str(self.wallet.pubkey)})
            blockhash = (await self._ask(tell, link, {"type": "blockhash"}))["blockhash"]
            tx = self.wallet.deposit(terms, want, blockhash)
            signature, raw = str(tx.signatures[0]), bytes(tx)
            if self.store is not None:
                self.store.deposit(market, signature, want, raw)  # before it leaves
            answer = await self._send(tell, link, signature, raw)
            log.info("%s: deposited %.2f credits of margin in market %s (%s, free now %.2f)",
                     self.name, want / scale, market, answer.get("status"),
                     answer["account"]["free"] / scale)  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: margin in market %s not topped up: %s", self.name, market, exc)

    async def _withdraw(self, tell, link, amount, scale):
        request = {"type": "withdraw", "id": "w-%s" % uuid.uuid4().hex[:16], "amount": amount}
        try:
            answer = await self._ask(tell, link, request)
        except ValueError as exc:  # e.g. its open bids hold some of it: next round
            log.warning("%s: margin in market %s not paid back: %s", self.name, link.market, exc)
            return
        log.info("%s: %.2f credits of margin paid back from market %s to %s (%s)", self.name,
                 amount / scale, link.market, answer["wallet"], answer["status"])  # fmt: skip

    async def _resend(self, tell, link, signature, raw):
        """A deposit kept from before: sent again; refused for good (the market's terms
        changed, it expired), it is marked failed, so it never blocks the next ones."""
        try:
            await self._send(tell, link, signature, raw)
        except ValueError as exc:
            if "unreachable" in str(exc) or "on their way" in str(exc):
                raise  # the market will know later: try again next round
            self.store.deposited(signature, "failed")
            log.warning("%s: deposit %s refused by market %s: %s", self.name, signature[:16],
                        link.market, exc)  # fmt: skip

    async def _send(self, tell, link, signature, raw):
        try:
            request = {"type": "deposit", "tx": base64.b64encode(raw).decode()}
            answer = await self._ask(tell, link, request)
        except ValueError as exc:
            if self.store is not None and "failed" in str(exc):
                self.store.deposited(signature, "failed")
            raise
        if self.store is not None:
            self.store.deposited(signature, answer.get("status", "sent"))
        return answer

    @staticmethod
    async def _ask(tell, link, request):
        answer = await tell(link, request)
        if answer.get("type") != request["type"]:
            raise ValueError("%s: %s" % (request["type"], answer.get("why", answer)))
        return answer
