"""The hub's contract ledger: the one owner of the hub's side of every contract.

Everything that moves a contract on the hub goes through here, and each move is
written to the store (hub.store, contract_states) before the hub acts on it, so
a hub that restarts finds every contract where it left it. The states and who
may set them are protocol.contract's (GridWorks' MarketContract):

  the buyer reports its       Created (buyer), Received (device): the battery
  BID_ACCEPT (market API)     accepted a share of a trade at the clearing price
  the buyer reports its       Confirmed (buyer), with the confirm's message id,
  BID_CONFIRM, before it      written before the frame is sent (write-ahead:
  leaves                      hub/market/exchange.py)
  withdrawn, or no Confirmed  TerminatedByAtn: the battery's accept lapses
  by the slot's deadline      unconfirmed, so neither side holds a contract
  the battery's receipt       Active, then the outcome its meter gave:
  (a TERMINATE answering      CompletedSuccess / CompletedFailureByScada /
  the buyer's confirm,        CompletedUnknownOutcome / TerminatedByScada,
  sealed for the hub)         with the metered kWh (it feeds reputation)
  no report by end + grace    CompletedUnknownOutcome (buyer)

The contract is protocol.contract.purchase(), as the firmware's is, so hub and
battery hold the same ContractId and terms without sending them.
"""

import logging

from hub.market.grid import SlotGrid
from protocol import contract

log = logging.getLogger(__name__)

OUTCOMES = {code: state for state, code in contract.OUTCOME_CODES.items()}  # code -> state
NEED_ACTIVE = (contract.COMPLETED_SUCCESS, contract.COMPLETED_FAILURE_BY_SCADA)
LIVE_NAMES = tuple(contract.STATE_NAMES[s] for s in contract.LIVE)


class Ledger:
    def __init__(self, store, slot_s, gate_s, market_maker, grace_s=None, events=None, grid=None):
        self.store = store
        self.events = events  # hub.events.Events: a "contract" event per state reached
        self.gate_s, self.market_maker = gate_s, market_maker
        # The slots' grid (hub/market/grid.py): the market maker's, read here.
        self.grid = grid or SlotGrid(slot_s, gate_s, answer_s=0.0)
        # A battery reports after its contract ends, once a session with the buyer is up.
        self.grace_s = slot_s if grace_s is None else grace_s

    def accepted(self, device_id, buyer, bid_id, price, kwh, kw, start, at=None):
        """The battery accepted our bid: Created then Received. -> the MarketContract."""
        slot_s = self.grid.length(start)
        deal = contract.purchase(
            device_id, buyer, bid_id, slot_s, self.gate_s, self.market_maker, start, kwh, kw
        )
        self.store.record_contract(deal, device_id, buyer, price, at=at)
        self._emit(deal.contract_id)
        self._advance(deal.contract_id, contract.RECEIVED, contract.DEVICE, at)
        return deal

    def confirming(self, contract_id, confirm_id, at=None):
        """Confirmed, before the BID_CONFIRM with this id leaves."""
        self._advance(contract_id, contract.CONFIRMED, contract.BUYER, at, confirm_id=confirm_id)

    def withdrawn(self, contract_id, why, at=None):
        self._advance(contract_id, contract.TERMINATED_BY_ATN, contract.BUYER, at)
        log.info("contract %s withdrawn: %s", contract_id, why)

    def reported(self, device_id, buyer, confirm_id, code, delivered_kwh, at=None):
        """Battery device_id's outcome report (buyer None: its receipt to the hub, which
        names no buyer). -> (contract row, new state) or None when it is not ours, not
        this battery's, not an outcome, or already final (a report may come twice)."""
        state = OUTCOMES.get(code)
        row = self.store.contract_by_confirm(buyer, confirm_id, device=device_id)
        if state is None or row is None:
            return None
        if row["device"] != device_id:  # a battery speaks only for its own contracts
            log.warning("battery %d reported on contract %s of battery %d: ignored",
                        device_id, row["id"], row["device"])  # fmt: skip
            return None
        if row["state"] not in LIVE_NAMES:
            return None
        if state in NEED_ACTIVE and row["state"] != "Active":
            self._advance(row["id"], contract.ACTIVE, contract.DEVICE, at)
        self._advance(row["id"], state, contract.DEVICE, at, delivered_kwh=delivered_kwh)
        return row, contract.STATE_NAMES[state]

    def expire(self, now_s, at=None):
        """Confirmed contracts whose report is overdue -> CompletedUnknownOutcome. -> ids."""
        overdue = []
        for state in LIVE_NAMES:
            for row in self.store.contracts(state=state, limit=10000):
                if row["start"] + row["duration_s"] + self.grace_s <= now_s:
                    self._advance(row["id"], contract.COMPLETED_UNKNOWN_OUTCOME, contract.BUYER, at)
                    overdue.append(row["id"])
        return overdue

    def bound(self, slot_name):
        """{(device, buyer)} that already hold a contract of this slot (a restarted hub
        must not buy the same trade twice)."""
        return {(r["device"], r["buyer"]) for r in self.store.contracts_of_slot(slot_name)}

    def _advance(self, contract_id, state, by, at, **more):
        self.store.advance_contract(contract_id, state, by, at=at, **more)
        self._emit(contract_id)

    def _emit(self, contract_id):
        if self.events is not None:
            row = self.store.contract(contract_id)
            self.events.emit(
                "contract", contract=row["id"], device=row["device"], buyer=row["buyer"],
                slot=row["slot"], start=row["start"], state=row["state"], price=row["price"],
                kwh=abs(row["avg_watts"]) * row["duration_s"] / 3_600_000,
                delivered_kwh=row["delivered_kwh"],
            )  # fmt: skip
