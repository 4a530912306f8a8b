"""Hardware-in-the-loop: a board with gridbid's firmware, driven over its serial REPL.

On the bench (hardware/HIL.md; the session's `bench` uploads the firmware first):
    .venv/bin/python -m pytest -p pytest_embedded tests/hil -m hil \\
        --embedded-services serial --port /dev/ttyUSB0 --hil-board esp32-devkitc ...
In CI, tests/tools/test_hil_on_vm.py runs these files against the MicroPython VM's
REPL on a pty (tests/hil/virtual_board.py), so the files themselves are tested on every run.
"""

import pytest
from benchlib import repl, run

pytestmark = pytest.mark.hil

NOW = 1763700000000


def test_the_board_runs_micropython_with_our_code(bench, dut):
    repl(dut)
    run(dut, "import sys; print('impl', sys.implementation.name)", "impl micropython")
    run(dut, "import protocol; print('gridbid', protocol.VERSION)", "gridbid 0.1.0")
    run(dut, "import node, execution, devices; print('firmware ok')", "firmware ok")


def test_etp_frames_round_trip_and_tampering_is_caught(bench, dut):
    repl(dut)
    run(dut, "from protocol import auth, errors, frame, message", ">>>")
    # Aggregator 1 seals with its pair key with battery 9; the battery opens it with the
    # key it holds under aggregator 1's id.
    run(dut, "a = frame.Codec(auth.Keyring({9: b'k' * 32}), key_id=1, peer=9)", ">>>")
    run(dut, "c = frame.Codec(auth.Keyring({1: b'k' * 32}), key_id=9)", ">>>")
    run(dut, "f = a.seal(message.bid(5, 9, 15.5, 1.0), %d)" % NOW, ">>>")
    run(dut, "print('price', c.open(f, %d).message.bid_price)" % NOW, "price 15.5")
    run(dut, "bad = bytearray(f); bad[40] ^= 1", ">>>")
    # One line: a block typed over several meets the REPL's auto-indent and "..." prompts.
    run(dut, "exec('def attempt(data):\\n try:\\n  c.open(data, %d)\\n"
             " except errors.BadTag:\\n  print(\\'caught BadTag\\')')" % NOW, ">>>")  # fmt: skip
    run(dut, "attempt(bytes(bad))", "caught BadTag")


def test_the_auction_logic_on_the_board(bench, dut):
    repl(dut)
    run(dut, "from auction import Auction, Bid", ">>>")
    run(dut, "a = Auction(14.0, 1.0, 300, 0)", ">>>")
    run(dut, "a.add(Bid(1, 11, 15.0, 1.0, 0)); a.add(Bid(2, 21, 16.0, 1.0, 5))", ">>>")
    run(dut, "print('winner', a.close()[0][0][0].peer)", "winner 2")


def test_hmac_speed_on_the_board(bench, dut):
    repl(dut)
    run(
        dut,
        "import time; from protocol import auth; k = auth.HmacKey(b'k' * 32); d = bytes(108)",
        ">>>",
    )
    run(dut, "t = time.ticks_us(); tags = [k.tag(d) for _ in range(200)]", ">>>")
    run(dut, "us = time.ticks_diff(time.ticks_us(), t) / 200", ">>>")
    match = run(dut, "print('tag_us %d' % us)", r"tag_us (\d+)")
    print("HMAC tag on this board: %s us" % match.group(1).decode())
