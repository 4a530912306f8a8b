"""coap_client.reconcile(): the battery's ContractBook against the hub's list — on
CPython and on the MicroPython VM, with a real book on disk."""

import coap_client
import contracts
from checks import TempDir

from protocol import contract as mc

# Compiling coap_client.py from source takes ~110k on the VM; compiled, as a board holds
# it, these run at 100k (tests/firmware/test_device_build.py runs them from the .mpy bundle).
MICROPYTHON_HEAP = "128k"
S = 1763700300  # a 15-minute slot boundary
NOW = S - 600  # before the first slot starts
RULES = {"market_maker": "hub", "slot_grid": (900, 0, 900), "max_kw": 5.0}  # the config's


def deal(n, slot=0, state=mc.CONFIRMED, watts=5000, maker="hub", minutes=15):
    start = S + slot * 900
    name = "rt%dgate5.%s.%d" % (minutes, maker, start)
    return mc.MarketContract(mc.contract_id(1001, 7, n), name, start, 12, watts, state)


def book_with(path, *deals):
    book = contracts.ContractBook(path)
    book.start(NOW)
    for c in deals:
        book.add(c, 7, 5000 + len(book), 18.0)
    return book


def listed(*deals):
    return [(c, 9, 6000 + i, 19.5) for i, c in enumerate(deals)]


def run(book, hub, now=NOW, omitted=0, adopt=RULES):
    said = []
    found = coap_client.reconcile(book, hub, now, omitted, adopt, said.append)
    return found, said


def test_a_book_that_agrees_reports_nothing():
    with TempDir() as d:
        book = book_with(d + "/book", deal(1), deal(2, slot=1))
        found, said = run(book, listed(deal(1), deal(2, slot=1)))
        assert found == {"agree": 2, "missing": [], "adopted": [], "unknown": [], "unsure": [],
                         "state": [], "terms": []}  # fmt: skip
        assert said == []


def test_a_lost_contract_is_adopted_only_when_its_terms_verify():
    with TempDir() as d:
        book = book_with(d + "/book", deal(1, slot=2, watts=3000))
        ok = deal(2)  # Confirmed, this market, not started, fits the inverter
        hub = listed(
            deal(1, slot=2, watts=3000),  # the one the book holds
            ok,
            deal(3, state=mc.ACTIVE),  # it ran: the meter reading under it is lost
            deal(4, maker="other"),  # another market maker's
            deal(5, slot=1, minutes=30),  # another slot length
            deal(6, slot=2, watts=3000),  # 3 kW more beside the 3 kW already sold: too much
            deal(7, state=mc.COMPLETED_SUCCESS),  # ended, and pruned here: as it should be
        )
        found, said = run(book, hub)
        assert found["adopted"] == [ok.contract_id]
        ids = [c.contract_id for c in (deal(3), deal(4), deal(5, slot=1, minutes=30), deal(6))]
        assert found["missing"] == ids and found["agree"] == 1 and found["unknown"] == [], found
        assert "coap: adopted contract %s from the hub (%s)" % (
            ok.contract_id, ok.market_slot_name) in said  # fmt: skip
        for cid in ids:
            assert (
                "coap: the hub holds contract %s as binding; this device has no record of it" % cid
            ) in said
        # on flash, with the hub's buyer, confirm id and price: it runs and reports as any
        again = contracts.ContractBook(d + "/book")
        again.start(NOW)
        e = again.entry(ok.contract_id)
        assert e.contract.state == mc.CONFIRMED and e.contract == ok
        assert (e.buyer_id, e.confirm_id, e.price, e.delivered_wh) == (9, 6001, 19.5, 0.0)

        # once its slot started, the same contract is not adopted any more
        book = book_with(d + "/book2")
        found, said = run(book, listed(deal(8)), now=S)
        assert found["missing"] == [deal(8).contract_id] and len(book) == 0
        found, said = run(book, listed(deal(8)), adopt=None)  # adoption off
        assert found["missing"] == [deal(8).contract_id] and len(book) == 0
        # governance moved the grid on before its slot (coap_client.take_grid): the 15-min
        # contract is not one of the slots the battery now sells, a 30-min one is
        moved = dict(RULES, slot_grid=(900, S, 1800))
        found, said = run(book, listed(deal(8)), adopt=moved)
        assert found["missing"] == [deal(8).contract_id] and len(book) == 0
        longer = deal(9, slot=1, minutes=30)
        found, said = run(book, listed(longer), adopt=moved)
        assert found["adopted"] == [longer.contract_id], said


def test_a_full_book_adopts_nothing_and_says_why():
    with TempDir() as d:
        book = contracts.ContractBook(d + "/book", max_contracts=1)
        book.start(NOW)
        book.add(deal(1, slot=3, watts=1000), 7, 1, 18.0)
        found, said = run(book, listed(deal(1, slot=3, watts=1000), deal(2)))
        assert found["missing"] == [deal(2).contract_id] and found["agree"] == 1
        assert [line for line in said if "not adopted" in line and "full" in line], said


def test_live_contracts_the_hub_does_not_list():
    with TempDir() as d:
        book = book_with(d + "/book", deal(1), deal(2, slot=1))
        found, said = run(book, listed(deal(1)))
        assert found["unknown"] == [deal(2, slot=1).contract_id] and found["agree"] == 1
        assert said == ["coap: live contract %s (Confirmed) is not in the hub's list"
                        % deal(2, slot=1).contract_id]  # fmt: skip
        # the hub left some out: it may be one of them
        found, said = run(book, listed(deal(1)), omitted=3)
        assert found["unsure"] == [deal(2, slot=1).contract_id] and found["unknown"] == []
        assert said[0].endswith("(it left some out)")


def test_state_and_terms_differences_are_logged():
    with TempDir() as d:
        book = book_with(d + "/book", deal(1), deal(2, slot=1))
        book.advance(deal(1).contract_id, mc.ACTIVE)  # the hub learns it from the report
        other_terms = mc.MarketContract(deal(2, slot=1).contract_id,
                                        deal(2, slot=1).market_slot_name, S + 900, 12, 4000,
                                        mc.CONFIRMED)  # fmt: skip
        found, said = run(book, listed(deal(1), other_terms))
        assert found["state"] == [(deal(1).contract_id, "Active", "Confirmed")]
        assert found["terms"] == [deal(2, slot=1).contract_id] and found["agree"] == 0
        assert said[0] == "coap: contract %s is Active here, Confirmed at the hub" % (
            deal(1).contract_id)  # fmt: skip
        assert said[1].startswith("coap: contract %s: our terms" % deal(2, slot=1).contract_id)
