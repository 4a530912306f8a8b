"""Which slot a battery offers, and what its contracts commit — CPython and the VM."""

import os

from contracts import ContractBook
from execution import Executor

from protocol import contract

START = 1763700000 - 1763700000 % 60
# Compiling execution, contracts and modbus from source needs more than the 100 KB the
# protocol tests run in; a board loads them precompiled (tools/flash.py build).
MICROPYTHON_HEAP = "256k"


def executor(tag, grid=None):
    folder = "/tmp/gridbid-exec-%s" % tag
    try:
        os.mkdir(folder)
    except OSError:
        for name in os.listdir(folder):
            os.remove(folder + "/" + name)
    book = ContractBook(folder + "/contracts.rec")
    book.start(START)
    cfg = {"slot_s": 60, "gate_s": 10, "max_kw": 5.0, "device_id": 1001, "market_maker": "hub",
           "slot_grid": grid or (60, 0, 60)}  # fmt: skip
    return Executor(cfg, None, None, book, print)


def test_a_sold_slot_moves_the_offer_to_the_next_one():
    ex = executor("slots")
    start, kwh = ex.free_slot(START + 5)
    assert start == START + 60 and kwh == 0.0833  # 5 kW for 60 s
    deal = ex.contract_from_confirm(1, 42, 18.0, kwh, 5.0, 77, start)
    assert deal.state == contract.CONFIRMED and deal.start_unix_s == start
    assert abs(ex.committed_kwh() - 0.0833) < 1e-3
    assert ex.free_slot(START + 5) == (START + 120, 0.0833)  # rounding left a sliver: full


def test_half_a_slot_leaves_the_other_half_on_offer():
    ex = executor("half")
    start, _kwh = ex.free_slot(START)
    ex.contract_from_confirm(1, 43, 18.0, 0.04, 5.0, 78, start)  # 0.04 kWh at 5 kW: 29 s
    again, free = ex.free_slot(START)
    assert again == start and 0.04 < free < 0.045


def test_a_governed_slot_length_takes_over_at_its_boundary():
    at = START - START % 240 + 240  # shared by 60 s and 120 s slots
    ex = executor("grid", (60, at, 120))
    before = ex.free_slot(at - 90)
    assert before == (at - 60, 0.0833)  # the last 60 s slot
    deal = ex.contract_from_confirm(1, 44, 18.0, 0.0833, 5.0, 79, at - 60)
    assert contract.parse_slot_name(deal.market_slot_name)[0] == 60
    assert ex.free_slot(at - 90) == (at, 0.1667)  # the first 120 s slot: twice the energy
    deal = ex.contract_from_confirm(1, 45, 18.0, 0.1667, 5.0, 80, at)
    assert contract.parse_slot_name(deal.market_slot_name)[:2] == (120, 10)
    assert deal.duration_minutes == 2
    assert ex.free_slot(at + 1) == (at + 120, 0.1667)  # on 120 s from then on
    assert contract.next_slot((60, at, 120), at - 1) == at
    assert contract.next_slot((60, at, 120), at) == at + 120
