"""A board reset mid-contract: the contract comes back from flash (GridWorks' start-up:
still inside its window, it resumes), runs to its end, and its outcome reaches the hub:
never CompletedUnknownOutcome, the outcome of a contract lost while the board was off."""

import re

import pytest
from benchlib import boot, repl, reset, until

pytestmark = pytest.mark.hil
COMPLETED = ("CompletedSuccess", "CompletedFailureByScada")


def test_a_reset_mid_contract_resumes_it_and_reports_its_outcome(bench, dut):
    hub = bench.hub()
    slot_s = bench.slot_s
    boot(dut, bench.board)
    dut.expect("battery %d ready on" % bench.device_id, timeout=30)
    started = dut.expect(r"contract (\S+) started: ([+-]\d+) W", timeout=8 * slot_s)
    cid = started.group(1).decode()

    reset(dut, bench.board)  # mid-contract: it runs for a whole slot
    back = dut.expect(r"contracts: (\d+) live, (\d+) to report", timeout=30)
    assert int(back.group(1)) >= 1, "the contract did not come back from flash"
    dut.expect("battery %d ready on" % bench.device_id, timeout=30)

    done = dut.expect(r"contract %s (\w+): (\d+) of (\d+) Wh" % re.escape(cid), timeout=3 * slot_s)
    state = done.group(1).decode()
    assert state in COMPLETED, state
    line = re.compile(r"\bcontract %s of battery %d: (\w+), " % (re.escape(cid), bench.device_id))
    told = until(lambda: [m for m in map(line.search, hub.lines) if m], 4 * slot_s,
                 "the hub to hear contract %s's outcome:\n%s" % (cid, hub.output))  # fmt: skip
    assert told[0].group(1) == state
    assert until(lambda: bench.contracts().get(cid, ("",))[0] == state, 5, "the store")
    repl(dut)
