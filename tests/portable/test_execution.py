"""Which slot a battery offers, and what its contracts commit — CPython and the VM."""

import os

from contracts import ContractBook
from execution import Executor

from protocol import contract

START = 1763700000 - 1763700000 % 60
# Compiling execution, contracts and modbus from source needs more than the 100 KB the
# protocol tests run in; a board loads them precompiled (tools/flash.py build).
MICROPYTHON_HEAP = "256k"


def executor(tag):
    folder = "/tmp/gridbid-exec-%s" % tag
    try:
        os.mkdir(folder)
    except OSError:
        for name in os.listdir(folder):
            os.remove(folder + "/" + name)
    book = ContractBook(folder + "/contracts.rec")
    book.start(START)
    cfg = {"slot_s": 60, "gate_s": 10, "max_kw": 5.0, "device_id": 1001, "market_maker": "hub"}
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
