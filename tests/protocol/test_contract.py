"""MarketContract terms, lifecycle rules and records — on CPython and the MicroPython VM."""

from checks import raises

from protocol import contract as c
from protocol.errors import ContractError

START = 1763700300 - 1763700300 % 900  # a 15-minute boundary
SLOT = "rt15gate5.hub1.%d" % START


def new(**changes):
    terms = {"by": c.BUYER, "contract_id": c.contract_id(1001, 1, 42), "market_slot_name": SLOT,
             "start_unix_s": START, "duration_minutes": 15, "watts": 4000}  # fmt: skip
    terms.update(changes)
    return c.MarketContract.create(**terms)


def test_contract_id_is_deterministic_and_distinct():
    first = c.contract_id(1001, 1, 42)
    assert first == c.contract_id(1001, 1, 42)
    others = {c.contract_id(1001, 1, 43), c.contract_id(1002, 1, 42), c.contract_id(1001, 2, 42)}
    assert len(others | {first}) == 4  # two buyers' bids may share a message_id
    assert len(first) == 36 and first[14] == "8" and first[19] in "89ab"  # UUID v8, RFC variant


def test_slot_names_follow_gridworks_and_allow_demo_seconds():
    assert c.slot_name(900, 300, "hub1", START) == SLOT
    assert c.parse_slot_name(SLOT) == (900, 300, "hub1", START)
    dotted = "rt30sgate5s.d1.isone.ver.keene.60"
    assert c.parse_slot_name(dotted) == (30, 5, "d1.isone.ver.keene", 60)
    bad_names = (
        "rt15gate5.hub1", "rt15gate5..%d" % START, "da60.hub1.3600", "rt15gate5.hub1.100",
        "rt15gate15.hub1.%d" % START, "rt0gate0.hub1.0", "rtxgate5.hub1.0", 12,
    )  # fmt: skip
    for bad in bad_names:
        raises(ContractError, c.parse_slot_name, bad)


def test_terms_are_validated():
    raises(ContractError, new, start_unix_s=START + 60)  # not the slot start
    raises(ContractError, new, duration_minutes=16)  # longer than the slot
    raises(ContractError, new, duration_minutes=0)
    raises(ContractError, new, duration_minutes=0.001)  # not whole seconds
    raises(ContractError, new, watts=0)
    raises(ContractError, new, watts=2**31)
    raises(ContractError, new, watts=1.5)
    raises(ContractError, new, contract_id="not-a-uuid")
    assert new(watts=-2500).energy_wh == -625.0  # charging
    demo = new(market_slot_name="rt30sgate5s.hub1.%d" % START, duration_minutes=0.5)
    assert demo.duration_s == 30 and demo.end_unix_s == START + 30


def test_only_the_buyer_creates():
    raises(ContractError, new, by=c.DEVICE)
    assert new().state == c.CREATED and new().live


def test_the_happy_path_alternates_device_and_buyer():
    deal = new()
    for state, by in ((c.RECEIVED, c.DEVICE), (c.CONFIRMED, c.BUYER), (c.ACTIVE, c.DEVICE),
                      (c.COMPLETED_SUCCESS, c.DEVICE)):  # fmt: skip
        deal.advance(state, by)
        assert deal.state == state
    assert not deal.live and deal.state_name == "CompletedSuccess"


def test_who_may_set_what():
    deal = new()
    raises(ContractError, deal.advance, c.RECEIVED, c.BUYER)  # only the device marks Received
    deal.advance(c.RECEIVED, c.DEVICE)
    raises(ContractError, deal.advance, c.CONFIRMED, c.DEVICE)  # only the buyer confirms
    raises(ContractError, deal.advance, c.TERMINATED_BY_ATN, c.DEVICE)
    raises(ContractError, deal.advance, c.TERMINATED_BY_SCADA, c.BUYER)
    raises(ContractError, deal.advance, c.COMPLETED_SUCCESS, c.DEVICE)  # not Active yet
    deal.advance(c.CONFIRMED, c.BUYER)
    raises(ContractError, deal.advance, c.ACTIVE, c.BUYER)
    raises(ContractError, deal.advance, c.CREATED, c.BUYER)  # no way back


def test_done_states_are_final():
    for end, by in ((c.TERMINATED_BY_ATN, c.BUYER), (c.TERMINATED_BY_SCADA, c.DEVICE),
                    (c.COMPLETED_UNKNOWN_OUTCOME, c.DEVICE)):  # fmt: skip
        deal = new()
        deal.advance(c.RECEIVED, c.DEVICE)
        deal.advance(end, by)
        for state in range(10):
            for who in (c.BUYER, c.DEVICE):
                assert not deal.may_advance(state, who)


def test_every_legal_transition_is_in_the_table_and_nothing_else():
    legal = 0
    for start in range(10):
        for state in range(10):
            for who in (c.BUYER, c.DEVICE):
                deal = new()
                deal.state = start  # a loaded record may be in any state
                if deal.may_advance(state, who):
                    legal += 1
                    assert start in c.RULES[state][1] and who in c.RULES[state][0]
    # Received, Confirmed, Active: 1 each; two terminations: 4 live states each;
    # unknown outcome: 4 states x 2 roles; three completions: Active x 2 roles.
    assert legal == 3 + 8 + 8 + 6


def test_binary_and_json_forms_round_trip():
    deal = new()
    deal.advance(c.RECEIVED, c.DEVICE)
    record = deal.to_bytes()
    assert len(record) == 35 + len(SLOT)
    again = c.MarketContract.from_bytes(record)
    assert again == deal and again.state == c.RECEIVED and again.contract_id == deal.contract_id
    doc = deal.to_json_dict()
    assert doc["Status"] == "Received" and doc["DurationMinutes"] == 15
    assert c.MarketContract.from_json_dict(doc) == deal


def test_broken_records_raise_contract_errors():
    record = new().to_bytes()
    wrong_version, wrong_state = b"\x02" + record[1:], record[:1] + b"\x0b" + record[2:]
    for bad in (record[:-1], record[:10], b"", wrong_version, wrong_state):
        raises(ContractError, c.MarketContract.from_bytes, bad)
    doc = new().to_json_dict()
    for key, value in (("Status", "Won"), ("DurationMinutes", "15"), ("StartUnixS", None)):
        broken = dict(doc)
        broken[key] = value
        raises(ContractError, c.MarketContract.from_json_dict, broken)
    raises(ContractError, c.MarketContract.from_json_dict, {"ContractId": doc["ContractId"]})
    raises(ContractError, c.MarketContract.from_json_dict, "not a dict")
