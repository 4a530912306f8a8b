"""ContractBook: the device's contracts across reboots — on CPython and the MicroPython VM.

Each test "reboots" by opening a new ContractBook on the same file. Power cuts
in the middle of a save are tests/firmware/test_power_cut.py.
"""

import gc
import os

import contracts
import store
from checks import TempDir, raises

from protocol import contract as mc
from protocol.errors import ContractError

SLOT = 900
S = 1763700300  # a 15-minute slot boundary


def terms(n, slot=0, watts=5000, state=mc.RECEIVED, maker="hub"):
    start = S + slot * SLOT
    name = "rt15gate5.%s.%d" % (maker, start)
    return mc.MarketContract(mc.contract_id(42, 7, 1000 + n), name, start, 15, watts, state)


def booted(path, now_s, **options):
    book = contracts.ContractBook(path, **options)
    book.start(now_s)
    return book


def test_a_new_book_is_empty_and_must_be_started():
    with TempDir() as d:
        book = contracts.ContractBook(d + "/book")
        raises(RuntimeError, book.add, terms(1), 7, 1, 15.0)  # would save over real contracts
        raises(RuntimeError, book.live)
        assert book.start(S) == []
        assert book.live() == [] and len(book) == 0 and book.mode(S) == "idle"
        assert book.corrupt is None and book.saves == 0
        assert os.listdir(d) == []  # nothing written until something happens
        raises(ValueError, contracts.ContractBook, d + "/book", contracts.MAX_CONTRACTS + 1)


def test_added_contracts_survive_a_reboot():
    with TempDir() as d:
        book = booted(d + "/book", S - 600)
        a = terms(1)
        kept = book.add(a, 7, 5001, 15.5)
        assert kept == a and kept is not a  # the book keeps its own copy
        a.state = mc.CONFIRMED  # the caller's object does not change the book's
        assert book.get(a.contract_id).state == mc.RECEIVED
        book.add(terms(2, slot=1, watts=-3000, state=mc.CONFIRMED), 8, 5002, 14.0)
        again = booted(d + "/book", S - 500)
        assert [c.contract_id for c in again.contracts()] == [a.contract_id, terms(2).contract_id]
        e = again.entry(a.contract_id)
        assert (e.buyer_id, e.confirm_id, e.price, e.delivered_wh, e.reported) == (
            7, 5001, 15.5, 0.0, False,
        )  # fmt: skip
        assert again.get(a.contract_id) == terms(1)
        assert again.get("no-such-id") is None and a.contract_id in again


def test_one_bid_makes_one_contract():
    with TempDir() as d:
        book = booted(d + "/book", S - 600)
        book.add(terms(1), 7, 5001, 15.5)
        exc = raises(ValueError, book.add, terms(1, state=mc.CONFIRMED), 7, 5002, 16.0)
        assert "already" in str(exc)
        raises(ValueError, booted(d + "/book", S).add, terms(1), 7, 5001, 15.5)  # after a reboot
        assert len(booted(d + "/book", S)) == 1


def test_add_checks_state_and_values_before_saving():
    with TempDir() as d:
        book = booted(d + "/book", S - 600)
        raises(ValueError, book.add, terms(1, state=mc.CREATED), 7, 1, 15.0)
        raises(ValueError, book.add, terms(1, state=mc.ACTIVE), 7, 1, 15.0)
        raises(ValueError, book.add, "contract", 7, 1, 15.0)
        # MicroPython's struct would silently truncate these: refused instead
        raises(ValueError, book.add, terms(1), 2**32, 1, 15.0)
        raises(ValueError, book.add, terms(1), -1, 1, 15.0)
        raises(ValueError, book.add, terms(1), 7, 2**64, 15.0)
        raises(ValueError, book.add, terms(1), 7, 1, "15")
        raises(ValueError, book.add, terms(1), 7, 1, float("nan"))
        raises(ValueError, book.add, terms(1), 7, 1, 10**400)
        assert len(book) == 0 and os.listdir(d) == []


def test_state_changes_follow_the_contract_rules_and_persist():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S - 600)
        cid = terms(1).contract_id
        book.add(terms(1), 7, 5001, 15.5)
        raises(ContractError, book.advance, cid, mc.CONFIRMED)  # only the buyer confirms
        raises(ContractError, book.accept_buyer_state, cid, mc.ACTIVE)  # only the device starts
        raises(ValueError, book.advance, "no-such-id", mc.ACTIVE)
        book.accept_buyer_state(cid, mc.CONFIRMED)
        book.accept_buyer_state(cid, mc.CONFIRMED)  # a re-sent BidConfirm: no change
        assert booted(path, S - 500).get(cid).state == mc.CONFIRMED
        book.advance(cid, mc.ACTIVE)
        assert booted(path, S).get(cid).state == mc.ACTIVE
        book.advance(cid, mc.COMPLETED_SUCCESS)
        raises(ContractError, book.advance, cid, mc.ACTIVE)  # done is final
        again = booted(path, S + 10 * SLOT)
        assert again.get(cid).state == mc.COMPLETED_SUCCESS  # stays done: never runs twice
        assert again.live() == [] and again.due(S + 10) == []


def test_a_failed_save_changes_nothing():
    with TempDir() as d:
        book = booted(d + "/book", S - 600)
        cid = terms(1).contract_id
        book.add(terms(1), 7, 5001, 15.5)
        saved = store.save

        def broken(path, payload):
            raise OSError(28)  # ENOSPC

        store.save = broken
        try:
            raises(OSError, book.accept_buyer_state, cid, mc.CONFIRMED)
            raises(OSError, book.add, terms(2, slot=1), 7, 5002, 15.0)
            raises(OSError, book.save_marks, {7: 5001}, 99)
        finally:
            store.save = saved
        assert book.get(cid).state == mc.RECEIVED and len(book) == 1
        assert book.marks == {} and book.own_id == 0
        book.accept_buyer_state(cid, mc.CONFIRMED)  # and it can be retried
        assert booted(d + "/book", S - 500).get(cid).state == mc.CONFIRMED


def test_startup_ends_contracts_whose_window_passed_while_off():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S - 600)
        for n, state in ((1, mc.RECEIVED), (2, mc.CONFIRMED), (3, mc.CONFIRMED)):
            book.add(terms(n, state=state), 7, 5000 + n, 15.0)
        book.advance(terms(3).contract_id, mc.ACTIVE)
        book.add(terms(4, slot=2), 8, 5004, 15.0)  # a later slot
        reports = booted(path, S + SLOT).start(S + SLOT)  # off for the whole first slot
        ended = [terms(n).contract_id for n in (1, 2, 3)]
        assert [r[0].contract_id for r in reports] == ended
        assert [(r[1], r[2]) for r in reports] == [(7, 5001), (7, 5002), (7, 5003)]
        again = booted(path, S + SLOT + 1)  # the outcome was persisted
        for cid in ended:
            assert again.get(cid).state == mc.COMPLETED_UNKNOWN_OUTCOME
        assert again.get(terms(4).contract_id).state == mc.RECEIVED  # its window is ahead
        assert [r[0].contract_id for r in again.reports()] == ended  # until reported
        for cid in ended:
            again.reported(cid)
        assert booted(path, S + SLOT + 2).reports() == []


def test_startup_resumes_an_active_contract_with_its_delivered_energy():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S - 600, flush_s=30)
        cid = terms(1).contract_id
        book.add(terms(1, state=mc.CONFIRMED), 7, 5001, 15.5)
        assert book.due(S - 1) == [] and book.due(S) == [book.get(cid)]
        book.advance(cid, mc.ACTIVE)
        assert book.mode(S) == "discharging"
        assert book.add_energy(cid, 10.0, S + 10) is True  # 610 s since start(): saves
        assert book.add_energy(cid, 10.0, S + 20) is False  # within flush_s: memory only
        assert book.add_energy(cid, 10.0, S + 39) is False
        assert book.delivered_wh(cid) == 30.0
        assert book.add_energy(cid, 10.0, S + 40) is True
        book.add_energy(cid, 5.0, S + 50)  # lost in the cut below: at most flush_s of metering
        again = booted(path, S + 60)
        assert again.get(cid).state == mc.ACTIVE and again.delivered_wh(cid) == 40.0
        assert again.mode(S + 60) == "discharging" and again.reports() == []
        assert again.due(S + 60) == []  # already Active: not started a second time
        assert again.add_energy(cid, 1.0, S + 70) is False  # flush_s counts from start()
        assert again.flush() is True and again.flush() is False
        assert booted(path, S + 80).delivered_wh(cid) == 41.0  # counts on, never restarts


def test_a_state_change_saves_the_metered_energy():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S, flush_s=30)
        cid = terms(1).contract_id
        book.add(terms(1, state=mc.CONFIRMED), 7, 5001, 15.5)
        book.advance(cid, mc.ACTIVE)
        book.add_energy(cid, 12.5, S + 10)
        assert book.ended(S + SLOT - 1) == [] and book.ended(S + SLOT) == [book.get(cid)]
        book.advance(cid, mc.COMPLETED_SUCCESS)
        again = booted(path, S + SLOT)
        assert again.delivered_wh(cid) == 12.5
        raises(ValueError, again.add_energy, cid, 1.0, S + SLOT)  # done: meters nothing
        assert again.reports()[0][0].state == mc.COMPLETED_SUCCESS


def test_add_energy_refuses_what_is_not_energy():
    with TempDir() as d:
        book = booted(d + "/book", S)
        cid = terms(1).contract_id
        book.add(terms(1, state=mc.CONFIRMED), 7, 5001, 15.5)
        raises(ValueError, book.add_energy, cid, 1.0, S)  # Confirmed, not Active
        book.advance(cid, mc.ACTIVE)
        for bad in (-1.0, float("nan"), float("inf"), True, "1"):
            raises(ValueError, book.add_energy, cid, bad, S)
        assert book.delivered_wh(cid) == 0.0


def test_mode_follows_the_active_contracts():
    with TempDir() as d:
        book = booted(d + "/book", S)
        sell = terms(1, state=mc.CONFIRMED)
        buy = terms(2, slot=1, watts=-3000, state=mc.CONFIRMED)
        other = terms(3, slot=1, watts=1000, state=mc.CONFIRMED, maker="hub2")
        for n, c in enumerate((sell, buy, other)):
            book.add(c, 7, n, 15.0)
        assert book.mode(S) == "idle"  # Confirmed is not yet executing
        book.advance(sell.contract_id, mc.ACTIVE)
        assert book.mode(S) == "discharging" and book.mode(S + SLOT) == "idle"
        book.advance(sell.contract_id, mc.COMPLETED_SUCCESS)
        book.advance(buy.contract_id, mc.ACTIVE)
        assert book.mode(S + SLOT) == "charging"
        book.advance(other.contract_id, mc.ACTIVE)
        assert book.mode(S + SLOT) == "charging"  # -3000 W + 1000 W
        book.failsafe = True
        assert book.mode(S + SLOT) == "failsafe"
        assert booted(d + "/book", S + SLOT).mode(S + SLOT) == "charging"  # not persisted


def test_expire_ends_contracts_never_started():
    with TempDir() as d:
        book = booted(d + "/book", S - 600)
        book.add(terms(1), 7, 1, 15.0)  # never confirmed by the buyer
        book.add(terms(2, state=mc.CONFIRMED), 7, 2, 15.0)
        book.advance(terms(2).contract_id, mc.ACTIVE)
        assert book.expire(S + SLOT - 1) == []
        assert book.expire(S + SLOT) == [book.get(terms(1).contract_id)]
        assert book.get(terms(1).contract_id).state == mc.COMPLETED_UNKNOWN_OUTCOME
        assert book.get(terms(2).contract_id).state == mc.ACTIVE  # the caller judges Active ones


def test_a_full_book_prunes_reported_contracts_and_refuses_otherwise():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S - 600, max_contracts=2)
        first, second = terms(1), terms(2, slot=1)
        book.add(first, 7, 1, 15.0)
        book.add(second, 7, 2, 15.0)
        exc = raises(contracts.BookFull, book.add, terms(3, slot=2), 7, 3, 15.0)
        assert "full" in str(exc)  # live contracts are never dropped
        book.accept_buyer_state(first.contract_id, mc.TERMINATED_BY_ATN)
        raises(contracts.BookFull, book.add, terms(3, slot=2), 7, 3, 15.0)  # not yet reported
        raises(ValueError, book.reported, second.contract_id)  # still live
        book.reported(first.contract_id)
        book.add(terms(3, slot=2), 7, 3, 15.0)  # prunes the first
        again = booted(path, S - 500, max_contracts=2)
        assert [c.contract_id for c in again.contracts()] == [
            second.contract_id, terms(3).contract_id,
        ]  # fmt: skip
        # the pruned contract cannot come back through a re-sent BidConfirm
        exc = raises(ValueError, again.add, terms(1), 7, 1, 15.0)
        assert "retired" in str(exc)


def test_pruning_takes_the_oldest_window_first():
    with TempDir() as d:
        book = booted(d + "/book", S - 600, max_contracts=3)
        for n, slot in ((1, 2), (2, 1), (3, 3)):
            book.add(terms(n, slot=slot), 7, n, 15.0)
            book.advance(terms(n).contract_id, mc.TERMINATED_BY_SCADA)
            book.reported(terms(n).contract_id)
        book.add(terms(4, slot=4), 7, 4, 15.0)
        assert terms(2).contract_id not in book and len(book) == 3  # slot 1 went first
        book.add(terms(5, slot=2, maker="hub2"), 7, 5, 15.0)  # ends after the retired slot 1


def test_marks_are_persisted_and_only_rise():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S)
        assert book.marks == {} and book.own_id == 0
        assert book.save_marks({7: 100, 8: 2**64 - 1}, S << 16) is True
        assert book.save_marks({7: 100}, S << 16) is False  # nothing new: no flash write
        assert book.save_marks({7: 90, 9: 5}, 1) is True  # 7 and own_id stay higher
        again = booted(path, S)
        assert again.marks == {7: 100, 8: 2**64 - 1, 9: 5} and again.own_id == S << 16
        raises(ValueError, again.save_marks, {2**32: 1}, 0)
        raises(ValueError, again.save_marks, {7: -1}, 0)
        raises(ValueError, again.save_marks, {}, 2**64)
        many = {100 + n: n for n in range(contracts.MAX_MARKS)}
        raises(ValueError, again.save_marks, many, 0)  # 3 held + 32 new > MAX_MARKS
        assert booted(path, S).marks == {7: 100, 8: 2**64 - 1, 9: 5}


def test_a_full_book_of_the_largest_contracts_fits_one_record():
    with TempDir() as d:
        path = d + "/book"
        n = contracts.MAX_CONTRACTS
        book = booted(path, S, max_contracts=n)
        maker = "m" * (mc.MAX_SLOT_NAME - len("rt15gate5..%d" % (S + n * SLOT)))
        for i in range(n):
            book.add(terms(i, slot=i, maker=maker), 2**32 - 1, 2**64 - 1, 99999.5)
        book.save_marks({i: 2**64 - 1 for i in range(contracts.MAX_MARKS)}, 2**64 - 1)
        assert book.record_size <= store.HEADER_SIZE + store.MAX_RECORD
        book = None  # one book in memory at a time, as on a board
        gc.collect()
        again = booted(path, S, max_contracts=n)
        assert len(again) == n and len(again.marks) == contracts.MAX_MARKS
        raises(contracts.BookFull, again.add, terms(n, slot=n), 7, 1, 15.0)


def test_a_corrupt_record_is_set_aside_and_the_book_starts_empty():
    with TempDir() as d:
        path = d + "/book"
        book = booted(path, S - 600)
        book.add(terms(1), 7, 1, 15.0)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[-1] ^= 0x40
        with open(path, "wb") as f:
            f.write(data)
        again = contracts.ContractBook(path)
        assert again.start(S) == []  # no crash loop
        assert "set aside" in again.corrupt and "CRC" in again.corrupt
        assert again.live() == [] and again.mode(S) == "idle"
        assert sorted(os.listdir(d)) == ["book.corrupt"]
        again.add(terms(2, slot=1), 7, 2, 15.0)  # usable at once
        assert [c.contract_id for c in booted(path, S).contracts()] == [terms(2).contract_id]


def test_a_record_with_a_valid_crc_but_bad_contents_is_set_aside_too():
    with TempDir() as d:
        path = d + "/book"
        store.save(path, b"\x01\x00\x05" + bytes(16))  # says 5 contracts, holds none
        book = contracts.ContractBook(path)
        assert book.start(S) == [] and "ends inside" in book.corrupt
        store.save(path, b"\x09" + bytes(18))
        assert booted(path, S).corrupt is not None  # an unknown book version
