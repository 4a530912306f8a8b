"""A full auction against a hub: the board, provisioned for it, offers its energy, the
hub's aggregators bid, the slot clears and the battery signs a contract, which the hub's
store holds too."""

import re

import pytest
from benchlib import boot, repl, until

pytestmark = pytest.mark.hil


def test_a_full_auction_against_the_hub(bench, dut):
    boot(dut, bench.board)
    dut.expect("battery %d ready on" % bench.device_id, timeout=30)
    hub = bench.hub()
    slot_s = bench.slot_s
    bid = dut.expect(r"bid (\d+\.\d+) c/kWh from aggregator (\d+)", timeout=6 * slot_s)
    dut.expect(r"auction closed: (\d+) bids, reserve (\d+\.\d+)", timeout=slot_s)
    signed = dut.expect(r"contract (\S+) with aggregator (\d+): (\S+)", timeout=2 * slot_s)
    cid, buyer, slot = (x.decode() for x in signed.groups())
    assert float(bid.group(1)) > 0 and int(buyer) in (1, 2)

    said = until(lambda: [x for x in hub.lines if "slot %s:" % slot in x], 2 * slot_s,
                 "the hub's summary of %s:\n%s" % (slot, hub.output))  # fmt: skip
    assert re.search(r": 1 offers \(.*\d+ contracts$", said[0]), said[0]
    held = until(lambda: bench.contracts().get(cid), 10, "contract %s in the hub's store" % cid)
    assert held[1] == slot and held[0] in ("Confirmed", "Active", "Received"), held
    assert "Traceback" not in hub.output, hub.output
    repl(dut)
