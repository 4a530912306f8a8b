"""Modbus framing and register values: pure functions of firmware/modbus.py, no sockets.

Runs on CPython and on the MicroPython VM (tests/conftest.py) at an ESP32's
heap. The register-map layer (register_map.py, devices.py) is tested through a fake
client in tests/device/plant_checks.py and against the simulator in
tests/firmware/test_modbus_devices.py.
"""

import binascii

import modbus
from checks import raises


def unhex(text):
    return binascii.unhexlify(text.replace(" ", ""))


# --- CRC and framing ------------------------------------------------------------


def test_crc16_classic_vectors():
    # 01 03 00 00 00 0A -> C5 CD, and the Modbus serial-line spec's 11 03 00 6B 00 03 -> 76 87
    assert modbus.rtu_frame(1, modbus.read_request(3, 0, 10)) == unhex("01 03 00 00 00 0A C5 CD")
    assert modbus.rtu_frame(0x11, modbus.read_request(3, 0x6B, 3)) == unhex("11 03 006B 0003 7687")
    assert modbus.crc16(b"") == 0xFFFF
    frame = modbus.rtu_frame(7, modbus.write_multiple_request(40301, [4, 37856]))
    assert modbus.crc16(frame) == 0  # a frame with its CRC appended checks to zero


def test_request_pdus():
    assert modbus.read_request(4, 0x48, 4) == unhex("04 0048 0004")
    assert modbus.write_single_request(40299, 1) == unhex("06 9D6B 0001")
    assert modbus.write_multiple_request(40299, [1, 1, 4, 37856]) == unhex(
        "10 9D6B 0004 08 0001 0001 0004 93E0"
    )
    assert modbus.tcp_frame(0x1234, 1, unhex("04 0048 0004")) == unhex(
        "1234 0000 0006 01 04 0048 0004"
    )


def test_requests_out_of_range_are_refused_not_truncated():
    raises(ValueError, modbus.read_request, 3, 0, 0)
    raises(ValueError, modbus.read_request, 3, 0, 126)
    raises(ValueError, modbus.read_request, 3, 65535, 2)
    raises(ValueError, modbus.read_request, 5, 0, 1)
    raises(ValueError, modbus.write_single_request, 0, 65536)
    raises(ValueError, modbus.write_single_request, -1, 0)
    raises(ValueError, modbus.write_multiple_request, 0, [])
    raises(ValueError, modbus.write_multiple_request, 0, [0] * 124)
    raises(ValueError, modbus.write_multiple_request, 0, [1, -1])


def test_parse_read_and_write_replies():
    request = modbus.read_request(3, 100, 2)
    assert modbus.parse_reply(request, unhex("03 04 0001 FFFF")) == [1, 65535]
    write = modbus.write_multiple_request(10, [1, 2, 3])
    assert modbus.parse_reply(write, unhex("10 000A 0003")) is None
    single = modbus.write_single_request(10, 7)
    assert modbus.parse_reply(single, unhex("06 000A 0007")) is None


def test_exception_replies_carry_code_function_and_name():
    request = modbus.read_request(4, 0, 2)
    err = raises(modbus.ModbusExceptionResponse, modbus.parse_reply, request, unhex("84 02"))
    assert (err.code, err.function) == (2, 4)
    assert "illegal data address" in str(err)
    for code, name in ((1, "illegal function"), (3, "illegal data value"), (4, "device failure"),
                       (11, "gateway")):  # fmt: skip
        err = raises(
            modbus.ModbusExceptionResponse, modbus.parse_reply, request, bytes((0x84, code))
        )
        assert err.code == code and name in str(err)
    assert isinstance(err, modbus.ModbusError)


def test_replies_that_do_not_answer_the_request_are_frame_errors():
    request = modbus.read_request(3, 0, 2)
    bad = ("04 04 0001 0002", "03 02 0001", "03 04 0001 00", "", "83 02 00")
    for reply in bad:
        raises(modbus.ModbusFrameError, modbus.parse_reply, request, unhex(reply))
    write = modbus.write_single_request(10, 7)
    raises(modbus.ModbusFrameError, modbus.parse_reply, write, unhex("06 000A 0008"))


def test_rtu_reply_checks():
    frame = modbus.rtu_frame(2, unhex("03 04 0001 0002"))
    assert modbus.rtu_reply_length(frame[:3]) == len(frame)
    assert modbus.rtu_pdu(frame, 2) == unhex("03 04 0001 0002")
    bad_crc = frame[:-1] + bytes((frame[-1] ^ 1,))
    assert "CRC" in str(raises(modbus.ModbusFrameError, modbus.rtu_pdu, bad_crc, 2))
    assert "unit" in str(raises(modbus.ModbusFrameError, modbus.rtu_pdu, frame, 3))
    raises(modbus.ModbusFrameError, modbus.rtu_pdu, frame[:3], 2)
    assert modbus.rtu_reply_length(unhex("02 83 02")) == 5
    assert modbus.rtu_reply_length(unhex("02 10 00")) == 8
    raises(modbus.ModbusFrameError, modbus.rtu_reply_length, unhex("02 2B 00"))


# --- register values ----------------------------------------------------------


def test_f32_word_orders():
    assert modbus.encode(230.5, "f32", "big") == [0x4366, 0x8000]
    assert modbus.encode(230.5, "f32", "little") == [0x8000, 0x4366]
    assert modbus.decode([0x4366, 0x8000], "f32", "big") == 230.5
    assert modbus.decode([0x8000, 0x4366], "f32", "little") == 230.5
    assert modbus.decode([0xC2F6, 0xE979], "f32") < -123.4  # -123.456


def test_integers_signs_and_ranges():
    assert modbus.decode([0xFFFF], "i16") == -1
    assert modbus.decode([0x8000], "i16") == -32768
    assert modbus.decode([0xFFFF], "u16") == 65535
    assert modbus.decode([0xFFFF, 0xFFFE], "i32") == -2
    assert modbus.decode([0xFFFE, 0xFFFF], "i32", "little") == -2
    assert modbus.decode([0x0001, 0x0000], "u32") == 65536
    assert modbus.encode(-2, "i16") == [0xFFFE]
    assert modbus.encode(300000, "i32") == [0x0004, 0x93E0]
    assert modbus.encode(-300000, "i32", "little") == [0x6C20, 0xFFFB]
    raises(ValueError, modbus.encode, 40000, "i16")
    raises(ValueError, modbus.encode, -1, "u16")
    raises(ValueError, modbus.encode, 1 << 32, "u32")
    raises(ValueError, modbus.encode, 1.5, "u16")


def test_scale_factors():
    assert modbus.scaled(8050, 1, -2) == 80.5  # SunSpec SoC with SoC_SF = -2
    assert modbus.scaled(1350, 0.001, 1) == 13.5  # WHRtg (Wh) with WHRtg_SF = 1, in kWh
    assert modbus.scaled(-100, 0.1) == -10.0
    assert modbus.scaled(512, 1, None) == 512 and isinstance(modbus.scaled(512), int)
    assert modbus.scaled(25, 1, 2) == 2500
    assert modbus.scaled(-1230.5, -1) == 1230.5  # a sign flip (Eastron import -> + export)
    for raw, scale, sf in ((8050, 1, -2), (1350, 0.001, 1), (-250, 0.1, None), (7, 1, 3)):
        assert abs(modbus.unscaled(modbus.scaled(raw, scale, sf), scale, sf) - raw) < 1e-9
    assert modbus.unscaled(3000, 1, -2) == 300000  # WSet with WSet_SF = -2
