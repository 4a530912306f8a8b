"""hub/ledger.py: the hub's side of each contract, on a real SQLite store, and the
same ContractId and terms as the firmware derives (firmware/execution.py)."""

import pytest

from hub.ledger import Ledger
from hub.store import Store
from protocol import contract, message
from protocol.contract import purchase_terms as terms
from simulator.model import firmware

START = 1763700300  # a multiple of 900 s and of 60 s
DEVICE, BUYER = 1001, 2


@pytest.fixture
def ledger(tmp_path):
    store = Store(tmp_path / "hub.sqlite")
    store.add_device(DEVICE, DEVICE, "127.0.0.20")
    yield Ledger(store, slot_s=900, gate_s=300, market_maker="hub")
    store.close()


def states(ledger, contract_id):
    return [h["to_state"] for h in ledger.store.contract_history(contract_id)]


def test_accept_and_confirm_write_the_lifecycle_before_the_confirm_leaves(ledger):
    deal = ledger.accepted(DEVICE, BUYER, bid_id=77, price=18.5, kwh=1.25, kw=5.0, start=START)
    assert deal.contract_id == contract.contract_id(DEVICE, BUYER, 77)
    assert deal.market_slot_name == contract.slot_name(900, 300, "hub", START)
    ledger.confirming(deal.contract_id, confirm_id=9001)
    assert states(ledger, deal.contract_id) == ["Created", "Received", "Confirmed"]
    assert ledger.store.contract_by_confirm(BUYER, 9001)["id"] == deal.contract_id
    assert ledger.bound(deal.market_slot_name) == {(DEVICE, BUYER)}


def test_the_terms_are_the_firmwares(ledger, tmp_path):
    """The battery builds its contract from the same BidConfirm: same id, start, watts."""
    execution = firmware("execution")

    class Book:  # the executor only hands the contract to its book here
        def add(self, deal, peer, confirm_id, price):
            self.deal = deal

    cfg = {"slot_s": 900, "gate_s": 300, "market_maker": "hub", "device_id": DEVICE,
           "slot_grid": (900, 0, 900)}  # fmt: skip
    executor = execution.Executor(cfg, board=None, plant=None, book=Book(), log=print)
    theirs = executor.contract_from_confirm(BUYER, 77, 18.5, 1.3, 4.0, 9001, START)
    ours = ledger.accepted(DEVICE, BUYER, bid_id=77, price=18.5, kwh=1.3, kw=4.0, start=START)
    assert ours.to_json_dict() | {"Status": None} == theirs.to_json_dict() | {"Status": None}
    assert terms(900, 1.3, 4.0) == (900, 5200)  # too long at 4 kW: squeezed into the slot
    # governance moved the grid on (hub/market/grid.py): both take the new length from then
    at = START - START % 1800 + 1800
    ledger.grid.value = cfg["slot_grid"] = (900, at, 600)
    theirs = executor.contract_from_confirm(BUYER, 78, 18.5, 1.3, 4.0, 9002, at)
    ours = ledger.accepted(DEVICE, BUYER, bid_id=78, price=18.5, kwh=1.3, kw=4.0, start=at)
    assert ours.to_json_dict() | {"Status": None} == theirs.to_json_dict() | {"Status": None}
    assert ours.market_slot_name.startswith("rt10gate5.") and ours.duration_minutes == 10


def test_a_success_report_passes_through_active_and_records_the_meter(ledger):
    deal = ledger.accepted(DEVICE, BUYER, 1, 18.0, 0.5, 5.0, START)
    ledger.confirming(deal.contract_id, 501)
    row, state = ledger.reported(DEVICE, BUYER, 501, contract.TERM_CONTRACT_SUCCESS, 0.49)
    assert state == "CompletedSuccess" and row["id"] == deal.contract_id
    assert states(ledger, deal.contract_id)[-2:] == ["Active", "CompletedSuccess"]
    assert ledger.store.contract(deal.contract_id)["delivered_kwh"] == 0.49
    # the same report again (a battery re-sends after a reconnect), or one that is not ours
    assert ledger.reported(DEVICE, BUYER, 501, contract.TERM_CONTRACT_SUCCESS, 0.49) is None
    assert ledger.reported(DEVICE, BUYER + 1, 501, contract.TERM_CONTRACT_SUCCESS, 0.49) is None
    assert ledger.reported(DEVICE, BUYER, 999, contract.TERM_CONTRACT_SUCCESS, 0.49) is None
    assert ledger.reported(DEVICE, BUYER, 501, message.TERM_NORMAL, 0.0) is None


@pytest.mark.parametrize(
    "code, final",
    [
        (contract.TERM_CONTRACT_FAILURE, "CompletedFailureByScada"),
        (contract.TERM_CONTRACT_UNKNOWN, "CompletedUnknownOutcome"),
        (contract.TERM_CONTRACT_STOPPED, "TerminatedByScada"),
    ],
)
def test_every_outcome_code_ends_the_contract_in_its_state(ledger, code, final):
    deal = ledger.accepted(DEVICE, BUYER, 2, 18.0, 0.5, 5.0, START)
    ledger.confirming(deal.contract_id, 502)
    assert ledger.reported(DEVICE, BUYER, 502, code, 0.1)[1] == final
    assert ledger.store.contract(deal.contract_id)["state"] == final


def test_no_report_within_the_grace_is_an_unknown_outcome_and_withdrawal_is_final(ledger):
    late = ledger.accepted(DEVICE, BUYER, 3, 18.0, 0.5, 5.0, START)
    ledger.confirming(late.contract_id, 503)
    lapsed = ledger.accepted(DEVICE, BUYER, 4, 18.0, 0.5, 5.0, START)
    ledger.withdrawn(lapsed.contract_id, "the link is down")
    end = START + 360  # 0.5 kWh at 5 kW: 6 minutes
    assert ledger.expire(end + 900 - 1) == []  # the battery may still report
    assert ledger.expire(end + 900) == [late.contract_id]
    assert ledger.store.contract(late.contract_id)["state"] == "CompletedUnknownOutcome"
    assert ledger.store.contract(lapsed.contract_id)["state"] == "TerminatedByAtn"
    assert ledger.expire(end + 10_000) == []  # final states stay


def test_a_battery_reports_only_on_its_own_contracts(ledger):
    """Battery B, with its own key, reporting battery A's contract as failed: ignored."""
    deal = ledger.accepted(DEVICE, BUYER, 3, 18.0, 0.5, 5.0, START)
    ledger.confirming(deal.contract_id, 503)
    other = DEVICE + 1
    assert ledger.reported(other, BUYER, 503, contract.TERM_CONTRACT_FAILURE, 0.0) is None
    assert states(ledger, deal.contract_id)[-1] == "Confirmed"
    row, state = ledger.reported(DEVICE, BUYER, 503, contract.TERM_CONTRACT_SUCCESS, 0.5)
    assert state == "CompletedSuccess"
