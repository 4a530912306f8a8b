"""The 84-byte ETP body — on CPython and on the MicroPython VM."""

from checks import raises, unhex, vectors

from protocol import errors, message, message_info

NAN, INF = float("nan"), float("inf")


def one_of_each():
    m = message
    return [
        m.register(1, 5, 13.5, 10.0, m.HEALTH_GOOD, 51.2, 5.0),
        m.query(2, 0, 4.0),
        m.query_response(3, 5, 14.0, 6.5, 60.0, 10.0, m.HEALTH_GOOD, 51.2, 5.0),
        m.bid(4, 5, 15.75, 2.5),
        m.bid_accept(5, 5, 15.75, 15.75, 2.5),
        m.bid_confirm(6, 5, 15.75, 2.5, 5.0),
        m.bid_reject(7, 5, 12.0, 14.0, m.REJECT_BELOW_RESERVE),
        m.terminate(8, 5),
        m.device_failure(9, 5, m.FAIL_BMS_ALARM, m.HEALTH_FAULT, 9.5, 48.0),
        m.bess_status(10, 5, 13.5, 9.0, 60.0, m.HEALTH_DEGRADED, 51.0, 4.5),
    ]


def test_body_is_84_bytes_with_the_papers_14_fields_in_order():
    assert len(message.FIELDS) == 14 and message.BODY_SIZE == 84
    assert message.FIELDS[0] == "message_type" and message.FIELDS[-1] == "discharge_rate"
    for msg in one_of_each():
        assert len(message.encode(msg)) == 84


def test_every_type_round_trips():
    msgs = one_of_each()
    assert [m.message_type for m in msgs] == list(range(10))
    for msg in msgs:
        assert message.decode(message.encode(msg)) == msg


def test_constructors_set_only_their_fields():
    bid = message.bid(4, 5, 15.75, 2.5)
    assert (bid.message_type, bid.bid_price, bid.required_energy_amount) == (3, 15.75, 2.5)
    assert bid.sale_price == 0 and bid.energy_total == 0 and bid.battery_voltage == 0
    assert bid.ttl == message_info.TIMING[message.BID][2]
    reply = message.query_response(3, 5, 14.0, 6.5, 60.0, 10.0, 0, 51.2, 5.0, ttl=3)
    assert (reply.sale_price, reply.energy_total, reply.percentage_for_sale) == (14.0, 6.5, 60.0)
    assert reply.ttl == 3 and reply.bid_price == 0
    fail = message.device_failure(9, 5, message.FAIL_BMS_LINK, message.HEALTH_FAULT, 9.5, 48.0)
    assert (fail.termination_code, fail.battery_health_status_code) == (2, 3)


def test_message_is_immutable():
    msg = message.bid(4, 5, 15.75, 2.5)
    raises(AttributeError, setattr, msg, "bid_price", 99.0)


def test_deadlines_and_priorities_follow_the_paper():
    m, info = message, message_info
    assert info.deadline_ms(m.DEVICE_FAILURE) == 200 and info.priority(m.DEVICE_FAILURE) == 0
    for kind in (m.BID_ACCEPT, m.BID_REJECT, m.BID_CONFIRM):
        assert info.deadline_ms(kind) == 500 and 5 <= info.priority(kind) <= 15
    assert (info.deadline_ms(m.QUERY_RESPONSE), info.priority(m.QUERY_RESPONSE)) == (500, 70)
    assert (info.deadline_ms(m.BESS_STATUS), info.priority(m.BESS_STATUS)) == (2000, 60)
    assert (info.deadline_ms(m.REGISTER), info.priority(m.REGISTER)) == (5000, 80)
    order = sorted(range(10), key=info.priority)
    assert order[0] == m.DEVICE_FAILURE  # sent before everything else


def test_wrong_length_and_unknown_type_are_distinct_errors():
    body = message.encode(message.bid(4, 5, 15.75, 2.5))
    raises(errors.BadLength, message.decode, body[:-1])
    raises(errors.BadLength, message.decode, body + b"\x00")
    raises(errors.BadLength, message.decode, b"")
    raises(errors.UnknownType, message.decode, b"\x0a" + body[1:])
    raises(errors.UnknownType, message.decode, b"\xff" + body[1:])


def test_impossible_values_are_refused_by_name():
    good = message.bid(4, 5, 15.75, 2.5)
    cases = (
        ("bid_price", NAN), ("bid_price", -0.01), ("sale_price", INF),
        ("energy_total", -INF), ("energy_total", -1.0), ("percentage_for_sale", 100.5),
        ("percentage_for_sale", -1.0), ("required_energy_amount", NAN),
        ("remaining_battery_energy", -2.0), ("battery_voltage", 5000.0),
        ("battery_voltage", -12.0), ("discharge_rate", INF),
    )  # fmt: skip
    for name, value in cases:
        values = list(good)
        values[message.FIELDS.index(name)] = value
        err = raises(errors.BadValue, message.check, message.Message(*values))
        assert name in str(err), str(err)
        import struct

        body = struct.pack(message.BODY_FORMAT, *values)  # a peer that does not check
        raises(errors.BadValue, message.decode, body)
    # The bounds themselves are fine.
    values = list(good)
    values[message.FIELDS.index("percentage_for_sale")] = 100.0
    message.check(message.Message(*values))


def test_encoder_refuses_ints_outside_their_widths():
    raises(errors.BadValue, message.bid, 2**64, 5, 15.0, 1.0)
    raises(errors.BadValue, message.bid, -1, 5, 15.0, 1.0)
    raises(errors.BadValue, message.bid, 1, 5, 15.0, 1.0, ttl=256)
    raises(errors.BadValue, message.bid, 1, 5, "15", 1.0)
    raises(errors.BadValue, message.bid_reject, 1, 5, 12.0, 14.0, 300)


def test_hand_built_messages_fail_with_bad_value():
    good = list(message.bid(4, 5, 15.75, 2.5))
    for index, value in ((4, "15"), (4, None), (0, 3.0), (0, True), (0, 12), (1, -1)):
        values = list(good)
        values[index] = value
        raises(errors.ETPError, message.encode, message.Message(*values))


def test_dict_form_round_trips_and_reports_mistakes():
    for msg in one_of_each():
        assert message_info.from_dict(message_info.as_dict(msg)) == msg
    assert message_info.from_dict({"type": "bid", "bid_price": 3})[4] == 3.0
    raises(errors.UnknownType, message_info.from_dict, {"type": "offer"})
    raises(errors.BadValue, message_info.from_dict, {"type": "bid", "bid_prise": 3})
    raises(errors.BadValue, message_info.from_dict, {"type": "bid", "ttl": 1.5})
    raises(errors.BadValue, message_info.from_dict, {"type": "bid", "bid_price": "3"})
    raises(errors.BadValue, message_info.from_dict, {"type": "bid", "bid_price": True})


def test_raw_vector_written_by_hand_decodes():
    spec = vectors("raw_by_hand.json")["fields_hex"]
    body = unhex("".join(hex_text for _name, hex_text, _value in spec))
    assert len(body) == 84
    msg = message.decode(body)
    for name, _hex_text, value in spec:
        assert getattr(msg, name) == value, (name, getattr(msg, name), value)
    assert message.encode(msg) == body


def test_message_ids_increase_across_a_reboot():
    before = message.MessageIds(now_ms=1763700000000)
    last = [before.next() for _ in range(1000)][-1]
    after = message.MessageIds(now_ms=1763700000001)  # rebooted 1 ms later
    assert after.next() > last
    resumed = message.MessageIds(now_ms=0, floor=last)  # clock not set yet: persisted mark
    assert resumed.next() == last + 1
