"""store.py: atomic, checksummed records — on CPython and the MicroPython VM.

Power cuts on a real LittleFS are tests/firmware/test_power_cut.py; these are the
record format and the file handling on the host filesystem.
"""

import os

import store
from checks import TempDir, raises


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def test_round_trip_and_replace():
    with TempDir() as d:
        path = d + "/book"
        assert store.load(path) is None  # no record yet
        store.save(path, b"first")
        assert store.load(path) == b"first"
        store.save(path, b"second, longer record")
        assert store.load(path) == b"second, longer record"
        store.save(path, b"")
        assert store.load(path) == b""
        assert sorted(os.listdir(d)) == ["book"]  # no temp file left behind


def test_the_format_is_magic_version_length_crc():
    data = store.encode(b"abc")
    assert data[:4] == b"GBrc" and data[4] == store.VERSION and data[5] == 0
    assert data[6:8] == b"\x00\x03" and len(data) == store.HEADER_SIZE + 3
    assert store.decode(data) == b"abc"
    assert store.encode(bytearray(b"abc")) == data
    raises(TypeError, store.encode, "text")


def test_a_payload_may_be_a_list_of_chunks():
    # ContractBook writes one small chunk per entry: no large buffer in a fragmented heap
    assert store.encode([b"ab", bytearray(b"c"), b""]) == store.encode(b"abc")
    assert store.encode([]) == store.encode(b"")
    with TempDir() as d:
        store.save(d + "/book", [b"con", b"tracts"])
        assert store.load(d + "/book") == b"contracts"
        raises(TypeError, store.save, d + "/book", [b"ok", "text"])
        raises(TypeError, store.save, d + "/book", 12)
        half = bytes(store.MAX_RECORD // 2)
        raises(ValueError, store.save, d + "/book", [half, half, b"!"])
        assert store.load(d + "/book") == b"contracts"


def test_every_flipped_byte_and_truncation_is_detected():
    data = store.encode(b"a contract record payload")
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        raises(store.CorruptRecord, store.decode, bytes(bad))
    for size in range(len(data)):
        raises(store.CorruptRecord, store.decode, data[:size])
    raises(store.CorruptRecord, store.decode, data + b"\x00")  # trailing bytes
    newer = bytearray(data)
    newer[4] = store.VERSION + 1
    assert "version" in str(raises(store.CorruptRecord, store.decode, bytes(newer)))


def test_a_corrupt_file_raises_corrupt_record_with_the_reason():
    with TempDir() as d:
        path = d + "/book"
        store.save(path, b"payload")
        data = bytearray(read(path))
        data[-1] ^= 0xFF
        write(path, data)
        exc = raises(store.CorruptRecord, store.load, path)
        assert "CRC" in str(exc) and path in str(exc)
        write(path, read(path)[:-3])  # torn
        assert "torn" in str(raises(store.CorruptRecord, store.load, path))
        write(path, b"")
        raises(store.CorruptRecord, store.load, path)
        assert store.set_aside(path)
        assert sorted(os.listdir(d)) == ["book.corrupt"]
        assert store.load(path) is None


def test_a_leftover_tmp_beside_a_record_is_ignored_and_removed():
    with TempDir() as d:
        path = d + "/book"
        store.save(path, b"committed")
        write(path + ".tmp", store.encode(b"cut before its rename")[:9])
        assert store.load(path) == b"committed"
        assert not exists(path + ".tmp")
        write(path + ".tmp", store.encode(b"complete, but the record is fine"))
        assert store.load(path) == b"committed"  # that save never returned
        assert not exists(path + ".tmp")


def test_a_torn_tmp_without_a_record_is_removed():
    with TempDir() as d:
        path = d + "/book"
        write(path + ".tmp", store.encode(b"first save, cut")[:-1])
        assert store.load(path) is None
        assert os.listdir(d) == []


def test_a_complete_tmp_is_adopted_when_the_record_is_missing_or_damaged():
    # remove-then-rename filesystems (FAT) can be cut between the two steps
    with TempDir() as d:
        path = d + "/book"
        write(path + ".tmp", store.encode(b"newest"))
        assert store.load(path) == b"newest"
        assert os.listdir(d) == ["book"]
        write(path, b"GBrc garbage")
        write(path + ".tmp", store.encode(b"newer"))
        assert store.load(path) == b"newer"
        assert store.load(path) == b"newer" and os.listdir(d) == ["book"]


def test_records_are_bounded():
    with TempDir() as d:
        path = d + "/book"
        store.save(path, bytes(store.MAX_RECORD))
        assert store.load(path) == bytes(store.MAX_RECORD)
        exc = raises(ValueError, store.save, path, bytes(store.MAX_RECORD + 1))
        assert "MAX_RECORD" in str(exc)
        assert sorted(os.listdir(d)) == ["book"]  # nothing written
        assert store.load(path) == bytes(store.MAX_RECORD)
        write(path, store.encode(b"x") + bytes(store.MAX_RECORD + 100))  # oversized file
        raises(store.CorruptRecord, store.load, path)
