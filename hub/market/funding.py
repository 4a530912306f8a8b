"""Margin in the market API: an aggregator's requests about its margin account, and the
check that what it bids is covered. The accounts themselves are the clearing house's
(hub/integrations/settlement/margin.py: deposits, what was paid, what is owed); the
Exchange uses this only when the hub settles (Exchange.use_margin).

    margin      -> {"type": "margin", "account": {deposited, paid, owed, free}} (base units)
    faucet      {"wallet"}  (LiteSVM only) -> {"type": "faucet", "given": base units}
    blockhash   -> {"type": "blockhash", "blockhash"}  (to sign a deposit with)
    deposit     {"tx": base64 of the signed transfer} -> {"type": "deposit", "signature",
                "amount", "status", "account"}
    withdraw    {"id": the aggregator's own, "amount": base units} -> {"type": "withdraw",
                "id", "amount", "wallet", "status", "signature", "account"}: free margin
                (less what its open layers and fills not contracted yet may cost) paid
                back to the wallet it deposits from (withdrawals.py); the same id again
                is the same withdrawal, whatever its amount. Refused while the hub
                starts (until it has resumed the slot a restart left gated)

Each is answered with its `ref`, or refused with an `error` (and an audit row). The chain
is asked outside the Exchange's call (a task per request, one at a time per aggregator),
so a slow chain never holds the market.
"""

import asyncio
import logging

from hub.market.standing import Refused

log = logging.getLogger(__name__)

KINDS = ("margin", "faucet", "blockhash", "deposit", "withdraw")


class Funding:
    def __init__(self, margin, refuse, market):
        self.margin = margin
        self._refuse = refuse  # Exchange._refuse(participant, what, why, slot, ref)
        # () -> (the open slot or None, {slot: Cleared}), the Exchange's; None while the hub
        # starts (a gated book not cleared again yet holds margin nobody counts)
        self._market = market
        self._busy = set()  # aggregator ids with a request in flight
        self._tasks = set()

    def terms(self, key_id):
        return self.margin.terms(key_id)

    def received(self, participant, msg):
        """A margin request (already authenticated and rate-limited by the Exchange)."""
        if participant.key_id in self._busy:
            raise Refused("one margin request at a time: wait for the answer")
        self._busy.add(participant.key_id)
        task = asyncio.ensure_future(self._serve(participant, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, participant, msg):
        key_id, kind, ref = participant.key_id, msg.get("type"), msg.get("ref")
        try:
            if kind == "margin":
                answer = {"account": self.margin.account(key_id)}
            elif kind == "faucet":
                answer = {"given": await self.margin.faucet(key_id, msg.get("wallet"))}
            elif kind == "blockhash":
                answer = {"blockhash": await self.margin.blockhash()}
            elif kind == "withdraw":
                answer = await self.margin.withdraw(key_id, msg.get("id"), msg.get("amount"),
                                                    lambda: self.committed(key_id))  # fmt: skip
                answer["account"] = self.margin.account(key_id)
            else:
                answer = await self.margin.deposit(key_id, msg.get("tx"))
                answer["account"] = self.margin.account(key_id)
            participant.send({"type": kind, "ref": ref, **answer})
        except ValueError as exc:  # margin.DepositError: refused, failed, or no chain
            self._refuse(participant, kind, str(exc), None, ref)
        except Exception:  # a bug must show, and the aggregator still gets its answer
            log.exception("market: %s of aggregator %d failed", kind, key_id)
            self._refuse(participant, kind, "the market could not handle it", None, ref)
        finally:
            self._busy.discard(key_id)

    def check(self, key_id, layers, slot, cleared):
        """Bid layers [(device, price, kWh, id)] of aggregator key_id in the open `slot`:
        their cost, with its other layers of the slot and its fills not contracted yet
        (cleared: {slot: Cleared}), must be within its free margin; else Refused."""
        cost = sum(self.margin.cost(price, kwh) for _device, price, kwh, _id in layers)
        spent = slot.spent.get(key_id, 0)
        free = self.margin.free(key_id) - spent - self._pending(key_id, cleared)
        if cost > free:
            scale = 10**self.margin.decimals
            raise Refused(
                "under-funded: these layers may cost %.4f credits and your free margin is "
                "%.4f (deposit to the clearing account first: README Settlement)"
                % (cost / scale, max(free, 0) / scale)
            )
        slot.spent[key_id] = spent + cost

    def committed(self, key_id):
        """What aggregator key_id's layers in the open slot and its fills not contracted yet
        may cost (base units): margin a withdrawal cannot take."""
        state = self._market()
        if state is None:
            raise ValueError("the market is starting: ask again in a moment")
        slot, cleared = state
        return (slot.spent.get(key_id, 0) if slot is not None else 0) + self._pending(
            key_id, cleared
        )

    def _pending(self, key_id, cleared):
        return sum(
            self.margin.cost(c.price, kwh)
            for c in cleared.values()
            for (buyer, device), kwh in c.fills.items()
            if buyer == key_id and (buyer, device) not in c.contracts
        )
