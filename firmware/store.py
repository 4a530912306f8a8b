"""Durable records on flash: one small file per record, replaced atomically.

save() writes the whole record to PATH.tmp, then renames it over PATH. A power
cut before the rename leaves the old record untouched (and a stray .tmp, which
load() removes); the rename itself is atomic on LittleFS v2 (one metadata
commit) and on POSIX. tests/firmware/test_power_cut.py cuts the power at every flash
write of a contract lifecycle on the VM's LittleFS: nothing was ever lost.
The same harness catches the alternatives: writing over PATH in place tears
the record when a cut hits the file's creation (LittleFS commits it empty
first), and on FAT most cuts tear it. FAT's rename removes the old file
first; load() adopts the complete .tmp such a cut leaves, but FAT has no
checksums and noisy torn writes break the filesystem itself: keep records
on LittleFS v2 (MicroPython's default on ESP32 and RP2).

On disk a record is a 12-byte header and the payload:

    magic b"GBrc" | format version u8 | reserved 0 u8 | payload length u16 | CRC-32 u32

all big-endian; the CRC-32 covers version, length and payload, so a torn,
truncated or bit-flipped file is refused with CorruptRecord instead of being
half-read. Payloads are bounded (MAX_RECORD) so a record always fits the heap.

MicroPython has no fsync; LittleFS makes a file durable when it is closed.
CPython (the same code on a Raspberry Pi) gets fsync of the file and of its
directory, without which ext4 may keep the rename but not the data.
"""

import binascii
import errno
import os
import struct

from protocol.compat import const

MAGIC = b"GBrc"
VERSION = const(1)
HEADER_SIZE = const(12)  # ">4sBBHI": magic, version, reserved, payload length, CRC-32
MAX_RECORD = const(4096)
_fsync = getattr(os, "fsync", None)  # None on MicroPython: LittleFS syncs at close


class CorruptRecord(ValueError):
    """A record file exists but is torn, truncated, tampered or of an unknown format."""


def encode(payload):
    """payload (bytes, or a list of byte chunks) -> the record's bytes."""
    chunks = _chunks(payload)
    return _header(chunks) + b"".join(chunks)


def _chunks(payload):
    if isinstance(payload, (bytes, bytearray)):
        return (payload,)
    if isinstance(payload, (list, tuple)):
        for chunk in payload:
            if not isinstance(chunk, (bytes, bytearray)):
                raise TypeError("a record payload is bytes or a list of bytes")
        return payload
    raise TypeError("a record payload is bytes or a list of bytes")


def _header(payload):
    """The header for payload, a list of chunks."""
    size = 0
    for chunk in payload:
        size += len(chunk)
    if size > MAX_RECORD:
        raise ValueError("record of %d bytes exceeds MAX_RECORD %d" % (size, MAX_RECORD))
    crc = binascii.crc32(struct.pack(">BH", VERSION, size))
    for chunk in payload:
        crc = binascii.crc32(chunk, crc)
    return struct.pack(">4sBBHI", MAGIC, VERSION, 0, size, crc)


def decode(data, name="record"):
    """A record's bytes -> payload bytes, or raise CorruptRecord saying what is wrong."""
    view = memoryview(data)
    return bytes(_check(view[:HEADER_SIZE], view[HEADER_SIZE:], name))


def _check(head, payload, name):
    if len(head) < HEADER_SIZE:
        raise CorruptRecord("%s: %d bytes, shorter than the header" % (name, len(head)))
    magic, version, flags, size, crc = struct.unpack_from(">4sBBHI", head)
    if magic != MAGIC:
        raise CorruptRecord("%s: bad magic %r" % (name, bytes(magic)))
    if flags:
        raise CorruptRecord("%s: reserved byte is %d, not 0" % (name, flags))
    if version != VERSION:
        raise CorruptRecord(
            "%s: format version %d, this firmware reads %d" % (name, version, VERSION)
        )
    if len(payload) != size:
        raise CorruptRecord(
            "%s: %d payload bytes, header says %d (torn write?)" % (name, len(payload), size)
        )
    if binascii.crc32(payload, binascii.crc32(struct.pack(">BH", version, size))) != crc:
        raise CorruptRecord("%s: CRC-32 mismatch" % name)
    return payload


def make_folder(path):
    """The record's folder: a board's fresh filesystem has none, and a save there
    would fail with the contract already promised."""
    cut = path.rfind("/")
    if cut > 0:
        try:
            os.mkdir(path[:cut])
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise


def save(path, payload):
    """Replace the record at path with payload, atomically. Raises OSError on a flash error.

    payload is bytes, or a list of byte chunks written one by one: a caller
    need not build one large buffer in a fragmented heap."""
    chunks = _chunks(payload)
    header = _header(chunks)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)  # LittleFS commits the file once, at close
        for chunk in chunks:
            f.write(chunk)
        if _fsync is not None:
            f.flush()
            _fsync(f.fileno())
    os.rename(tmp, path)  # replaces an existing record on LittleFS and POSIX
    if _fsync is not None and hasattr(os, "O_RDONLY"):  # the directory too, for the rename
        cut = path.rfind("/")
        fd = os.open(path[:cut] if cut > 0 else ("/" if cut == 0 else "."), os.O_RDONLY)
        try:
            _fsync(fd)
        finally:
            os.close(fd)


def load(path):
    """The payload saved at path (a bytearray), or None if there is none;
    CorruptRecord if it is damaged.

    A leftover PATH.tmp is a save cut short before its rename. Beside a good
    record it is removed: that save never returned. It is adopted only when it
    is complete and the record is missing or damaged: a filesystem whose rename
    is remove-then-rename (FAT) can be cut between the two, and then the .tmp
    is the only copy.
    """
    tmp = path + ".tmp"
    try:
        payload = _load(path)
    except CorruptRecord:
        payload = _adopt(tmp, path)
        if payload is None:
            raise
        return payload
    if payload is None:
        return _adopt(tmp, path)
    _remove(tmp)
    return payload


def _adopt(file, path):
    """The payload of file (a PATH.tmp), renamed to path, if it is complete."""
    try:
        payload = _load(file)
    except CorruptRecord:
        _remove(file)  # torn: its save never returned
        return None
    if payload is not None:
        os.rename(file, path)
    return payload


def _load(path):
    """The payload, read straight into one buffer of its size: read(n) would
    allocate n bytes up front, and the heap of a board is small."""
    try:
        size = os.stat(path)[6]
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise  # a flash read error is not "no record": never start empty over a real one
    if size > HEADER_SIZE + MAX_RECORD:
        raise CorruptRecord("%s: %d bytes, larger than any record" % (path, size))
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
        payload = bytearray(max(0, size - HEADER_SIZE))
        if payload and f.readinto(payload) != len(payload):
            payload = b""  # the file shrank under us: refused below as torn
    return _check(head, payload, path)


def set_aside(path, suffix=".corrupt"):
    """Rename a damaged record out of the way (kept for a post-mortem); True if moved."""
    try:
        os.rename(path, path + suffix)
        return True
    except OSError:
        pass
    _remove(path)
    return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
