"""The ContractBook's record on flash: its byte layout, written and read.

Record payload (big-endian), after store.py's header:
    book version u8 | marks n u8 | contracts n u8 | own_id u64 | retired_s u64
    n x (sender key id u32, highest message_id u64)
    n x (buyer_id u32, confirm_id u64, price f64, delivered_wh f64, flags u8,
         contract length u8, MarketContract.to_bytes())
"""

import struct

import store

from protocol import contract as mc
from protocol.compat import const

BOOK_VERSION = const(1)
_HEAD = ">BBBQQ"
_HEAD_SIZE = const(19)
_MARK = ">IQ"
_MARK_SIZE = const(12)
_ENTRY = ">IQddBB"
_ENTRY_SIZE = const(30)
_REPORTED = const(1)
MAX_MARKS = const(32)


class Entry:
    """One contract and what the device knows about it. Read-only outside the book."""

    def __init__(self, contract, buyer_id, confirm_id, price, delivered_wh=0.0, reported=False):
        self.contract = contract
        self.buyer_id = buyer_id
        self.confirm_id = confirm_id
        self.price = price
        self.delivered_wh = delivered_wh
        self.reported = reported

    def report(self):
        return (self.contract, self.buyer_id, self.confirm_id)


def encode(marks, own_id, retired_s, entries):
    """The book's state -> the record payload, as a list of chunks."""
    # A list of small chunks, not one buffer: after days of uptime the heap
    # may hold no free 3 KB block, and store.save writes chunks one by one.
    chunks = [
        struct.pack(
            _HEAD, BOOK_VERSION, len(marks), len(entries), own_id, retired_s,
        )
    ]  # fmt: skip
    for sender, high in marks.items():
        chunks.append(struct.pack(_MARK, sender, high))
    for e in entries:
        raw = e.contract.to_bytes()
        flags = _REPORTED if e.reported else 0
        chunks.append(
            struct.pack(_ENTRY, e.buyer_id, e.confirm_id, e.price, e.delivered_wh, flags, len(raw))
        )
        chunks.append(raw)
    return chunks


def decode(payload):
    """A record payload (None: no record yet) -> (marks, own_id, retired_s, entries).

    Raises store.CorruptRecord on anything that is not a whole, current record.
    """
    if payload is None:
        return {}, 0, 0, []
    size = len(payload)
    if size < _HEAD_SIZE:
        raise store.CorruptRecord("contract record of %d bytes is too short" % size)
    version, n_marks, n_entries, own_id, retired = struct.unpack_from(_HEAD, payload, 0)
    if version != BOOK_VERSION:
        raise store.CorruptRecord(
            "contract book version %d, this firmware reads %d" % (version, BOOK_VERSION)
        )
    pos = _HEAD_SIZE
    if pos + n_marks * _MARK_SIZE > size:
        raise store.CorruptRecord("contract record ends inside its marks")
    marks = {}
    for _ in range(n_marks):
        sender, high = struct.unpack_from(_MARK, payload, pos)
        marks[sender] = high
        pos += _MARK_SIZE
    entries = []
    for _ in range(n_entries):
        if pos + _ENTRY_SIZE > size:
            raise store.CorruptRecord("contract record ends inside entry %d" % len(entries))
        buyer, confirm, price, wh, flags, length = struct.unpack_from(_ENTRY, payload, pos)
        pos += _ENTRY_SIZE
        if pos + length > size:
            raise store.CorruptRecord("contract record ends inside contract %d" % len(entries))
        try:
            c = mc.MarketContract.from_bytes(payload[pos : pos + length])
        except ValueError as exc:
            raise store.CorruptRecord("contract %d: %s" % (len(entries), exc)) from None
        pos += length
        entries.append(Entry(c, buyer, confirm, price, wh, bool(flags & _REPORTED)))
    if pos != size:
        raise store.CorruptRecord("contract record has %d bytes after its contracts" % (size - pos))
    return marks, own_id, retired, entries
