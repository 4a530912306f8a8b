"""CoAP messages, their authentication and the contract list (protocol/coap.py) — on
CPython and on the MicroPython VM. tests/hub/integrations/test_coap.py checks the same codec against
aiocoap's, and both ends against each other over UDP."""

import random

from checks import raises, unhex

from protocol import auth, coap
from protocol import contract as mc
from protocol.errors import ContractError

# Compiling protocol/coap.py and contract.py from source takes more than the 100 KB the
# other protocol tests run in; a board loads them precompiled (tools/flash.py build).
MICROPYTHON_HEAP = "128k"
KEY = auth.HmacKey(b"k" * 32)
S = 1763700300  # a 15-minute slot boundary


def test_rfc_7252_example_request_decodes_and_encodes_back():
    # RFC 7252 Appendix A, figure 16's request: CON GET /temperature, MID 0x7d34
    data = unhex("40017d34bb74656d7065726174757265")
    m = coap.decode(data)
    assert (m.mtype, m.code, m.mid, m.token, m.payload) == (coap.CON, coap.GET, 0x7D34, b"", b"")
    assert m.options == [(coap.URI_PATH, b"temperature")]
    assert coap.encode(coap.CON, coap.GET, 0x7D34, b"", coap.path_options("temperature")) == data


def test_extended_deltas_lengths_token_and_payload_round_trip():
    for length in (0, 12, 13, 268, 269, 600):
        options = [(coap.OBSERVE, b""), (coap.URI_PATH, b"contracts"), (coap.URI_PATH, b"1001"),
                   (coap.MAX_AGE, coap.uint(60)), (300, b"x" * length),
                   (coap.AUTH, b"a" * 32)]  # fmt: skip
        data = coap.encode(coap.NON, coap.CONTENT, 0x1FFFF, b"tok\x00", options, b"\xff\x00!")
        m = coap.decode(data)
        assert (m.mtype, m.code, m.mid, m.token) == (coap.NON, coap.CONTENT, 0xFFFF, b"tok\x00")
        assert m.options == options and m.payload == b"\xff\x00!"
        assert coap.option(m.options, coap.URI_PATH) == b"contracts"  # the first one
        assert coap.option(m.options, 12) is None
    empty = coap.decode(coap.encode(coap.ACK, coap.EMPTY, 7))
    assert (empty.mtype, empty.code, empty.mid, empty.options, empty.payload) == (
        coap.ACK, 0, 7, [], b"")  # fmt: skip


def test_integer_options_and_codes():
    for value, raw in ((0, b""), (1, b"\x01"), (255, b"\xff"), (256, b"\x01\x00"),
                       (86400, b"\x01\x51\x80")):  # fmt: skip
        assert coap.uint(value) == raw and coap.to_uint(raw) == value
    raises(coap.CoapError, coap.to_uint, b"\x01" * 5)
    raises(coap.CoapError, coap.to_uint, None)
    assert [coap.code_str(c) for c in (coap.GET, coap.CONTENT, coap.UNAUTHORIZED)] == [
        "0.01", "2.05", "4.01"]  # fmt: skip


def test_encode_refuses_what_it_cannot_write():
    raises(coap.CoapError, coap.encode, coap.CON, coap.GET, 1, b"123456789")
    err = raises(coap.CoapError, coap.encode, coap.CON, coap.GET, 1, b"",
                 [(coap.URI_PATH, b"a"), (coap.OBSERVE, b"")])  # fmt: skip
    assert "ascending" in str(err)


def test_malformed_messages_raise_coap_error_only():
    for bad, why in (
        (b"", "4-byte header"), (b"\x40\x01\x00", "4-byte header"),
        (b"\x80\x01\x00\x01", "version 2"), (b"\x49\x01\x00\x01" + b"t" * 9, "token length"),
        (b"\x44\x01\x00\x01tok", "token length"), (b"\x40\x01\x00\x01\xff", "without a payload"),
        (b"\x40\x01\x00\x01\xb5abc", "past the end"), (b"\x40\x01\x00\x01\xf0", "nibble 15"),
        (b"\x40\x01\x00\x01\xd0", "nibble 13"), (b"\x40\x01\x00\x01\xe0\x01", "nibble 14"),
    ):  # fmt: skip
        err = raises(coap.CoapError, coap.decode, bad)
        assert why in str(err), (bad, str(err))
    # Mutations of a valid message: decoded, or refused with CoapError; nothing else
    options = [(coap.OBSERVE, b""), (coap.URI_PATH, b"p"), (coap.AUTH, b"z" * 32)]
    good = coap.encode(coap.CON, coap.GET, 9, b"tk", options, b"body")
    if hasattr(random, "Random"):  # CPython
        pick = random.Random(5).getrandbits
    else:  # MicroPython: one generator
        random.seed(5)
        pick = random.getrandbits
    refused = 0
    for _ in range(400):
        data = bytearray(good)
        for _ in range(1 + pick(2)):
            data[pick(8) % len(data)] = pick(8)
        cut = bytes(data[: len(data) - pick(3)])
        try:
            coap.decode(cut)
        except coap.CoapError:
            refused += 1
    assert 0 < refused < 400


def test_requests_are_signed_over_method_path_device_time_nonce_and_payload():
    value = coap.sign_request(KEY, 1001, coap.GET, "contracts/1001", 1763700000123, 0xDEADBEEF)
    # the same bytes on both runtimes (computed once, kept here)
    assert value == unhex("000003e90000019aa4b6457bdeadbeef"
                          "b08b783b6940f00227fb40c44e1c46e9"), value  # fmt: skip
    assert coap.request_auth(value) == (1001, 1763700000123, 0xDEADBEEF)
    assert coap.request_tag_ok(KEY, value, coap.GET, "contracts/1001")
    assert not coap.request_tag_ok(KEY, value, coap.GET, "contracts/1002")  # another path
    assert not coap.request_tag_ok(KEY, value, coap.GET, "contracts/1001", b"x")
    assert not coap.request_tag_ok(KEY, value, 2, "contracts/1001")  # another method
    assert not coap.request_tag_ok(auth.HmacKey(b"o" * 32), value, coap.GET, "contracts/1001")
    for i in (3, 11, 15, 20):  # key id, timestamp, nonce, tag: every part is covered
        bad = bytearray(value)
        bad[i] ^= 1
        assert not coap.request_tag_ok(KEY, bytes(bad), coap.GET, "contracts/1001"), i
    for bad in (None, b"", value[:-1], value + b"\x00"):
        raises(coap.CoapError, coap.request_auth, bad)
    raises(coap.CoapError, coap.sign_request, KEY, 2**32, coap.GET, "time", 1, 1)
    raises(coap.CoapError, coap.sign_request, KEY, 1, coap.GET, "time", -1, 1)


def test_responses_are_bound_to_their_request():
    request = coap.sign_request(KEY, 1001, coap.GET, "price", 1763700000123, 7)
    value = coap.sign_response(KEY, request, coap.CONTENT, "price", 1763700000456, b"{}")
    assert len(value) == 24
    ok = coap.response_hub_ms(KEY, request, coap.CONTENT, "price", value, b"{}")
    assert ok == 1763700000456
    other = coap.sign_request(KEY, 1001, coap.GET, "price", 1763700000123, 8)  # another nonce
    assert coap.response_hub_ms(KEY, other, coap.CONTENT, "price", value, b"{}") is None
    for code, path, payload in ((0x83, "price", b"{}"), (coap.CONTENT, "time", b"{}"),
                                (coap.CONTENT, "price", b"{ }")):  # fmt: skip
        assert coap.response_hub_ms(KEY, request, code, path, value, payload) is None
    later = bytearray(value)
    later[7] ^= 1  # a replayed notification passed off as newer
    assert coap.response_hub_ms(KEY, request, coap.CONTENT, "price", bytes(later), b"{}") is None
    for bad in (None, b"", value[:-1]):
        assert coap.response_hub_ms(KEY, request, coap.CONTENT, "price", bad, b"{}") is None
    assert coap.response_hub_ms(auth.HmacKey(b"o" * 32), request, coap.CONTENT, "price", value,
                                b"{}") is None  # fmt: skip


def deal(n, maker="hub", state=mc.CONFIRMED, watts=5000):
    start = S + n * 900
    return mc.MarketContract(mc.contract_id(1001, 7, 100 + n), "rt15gate5.%s.%d" % (maker, start),
                             start, 12, watts, state)  # fmt: skip


def test_contract_list_round_trips_and_stays_in_one_datagram():
    entries = [(deal(n), 7, 5000 + n, 18.25) for n in range(3)]
    payload, count = coap.encode_contracts(entries)
    assert count == 3 and payload[:3] == b"\x01\x03\x00"
    listed, omitted = coap.decode_contracts(payload)
    assert omitted == 0 and [(c, b, i, p) for c, b, i, p in listed] == entries
    assert listed[0][0].state_name == "Confirmed" and len(payload) == 3 + 3 * (21 + 35 + 24)

    many = [(deal(n), 7, n, 1.0) for n in range(11)]
    payload, count = coap.encode_contracts(many, limit=8)
    assert count == 8 and coap.decode_contracts(payload)[1] == 3
    payload, count = coap.encode_contracts(many, limit=8, total=300)
    assert coap.decode_contracts(payload)[1] == 255  # counted up to a byte
    # long market maker names: the byte budget, not the count, stops the list
    long = [(deal(n, maker="m" * 70), 7, n, 1.0) for n in range(12)]
    payload, count = coap.encode_contracts(long, limit=12)
    assert len(payload) <= 1024 and 0 < count < 12
    assert [c for c, *_ in coap.decode_contracts(payload)[0]] == [c for c, *_ in long[:count]]
    assert coap.encode_contracts([]) == (b"\x01\x00\x00", 0)


def test_broken_contract_lists_are_refused():
    payload, _count = coap.encode_contracts([(deal(1), 7, 5001, 18.25)])
    for bad in (b"", b"\x02\x00\x00", payload[:-1], payload[:10], payload + b"\x00",
                b"\x01\x02\x00" + payload[3:]):  # fmt: skip
        raises(ValueError, coap.decode_contracts, bad)
    broken = bytearray(payload)
    broken[3 + 21] = 9  # the contract record's version
    raises(ContractError, coap.decode_contracts, bytes(broken))
