"""ContractBook: the one owner of the battery's market contracts, kept on flash.

Every contract the device holds, with who bought it, the metered energy, and
whether its outcome was reported, plus the ETP high-water marks, is ONE record
(store.py), rewritten whole and atomically on each change. So after any power
cut the book is exactly as the last save that completed left it (or the one
under way, if its rename made it): no committed contract is lost or
half-written, and none executes twice (a contract that reached a done state
is done in every later record). Every call that changes a contract saves
before it returns, and on a failed save (OSError) leaves the book as it was.
The state rules themselves are MarketContract.advance()'s
(protocol/contract.py); the book only says on whose behalf (DEVICE or BUYER).

Start-up (GridWorks SCADA): start(now_s) reads the record; a live contract
whose window ended while the device was off becomes CompletedUnknownOutcome
and is queued for reporting; one still inside its window resumes with the
watt-hours already delivered; mode() follows the Active contracts.

Metering is persisted at most every flush_s seconds (and with every state
change), to spare the flash: add_energy() saves at its first call flush_s or
more after the last save, so a power cut loses the energy metered since then:
at most flush_s seconds plus one metering interval. It is never counted
twice: the record holds the running total, not increments, so a reboot
resumes from the last saved total (tests/firmware/test_power_cut.py checks both).

Bounds: max_contracts entries (their worst-case size must fit one record);
done contracts, once reported, are pruned oldest-end first when room is
needed; a book full of live or unreported contracts refuses new ones
(BookFull) rather than drop one. A pruned contract's window end raises
`retired_s`, and a contract ending at or before it is refused: the ETP marks
refuse a replayed BidConfirm, and this refuses a re-sent one for a contract
the book no longer remembers (the price: a rare safe refusal of a contract
for a slot that ends before one already pruned).

The record's byte layout is book_record.py's.
"""

import book_record
import store
from book_record import MAX_MARKS, Entry

from protocol import contract as mc
from protocol.compat import const

_U32 = const(0xFFFFFFFF)
_U64 = const(0xFFFFFFFFFFFFFFFF)
# 16 of the largest entries (MarketContract.to_bytes() is 35 bytes + a slot name
# of up to 96) and 32 marks make a 2,979-byte record: within MAX_RECORD, and
# ~10 KB of heap for the book in memory.
MAX_CONTRACTS = const(16)


class BookError(ValueError):
    """A request the book refuses: unknown or duplicate contract, bad value."""


class BookFull(BookError):
    """Every slot holds a live or not yet reported contract."""


class ContractBook:
    def __init__(self, path, max_contracts=MAX_CONTRACTS, flush_s=30):
        if not 0 < max_contracts <= MAX_CONTRACTS:
            raise ValueError("max_contracts must be 1..%d to fit one record" % MAX_CONTRACTS)
        self.path = path
        self.max_contracts = max_contracts
        self.flush_s = flush_s
        self.failsafe = False  # set by the caller after a device failure; not persisted
        self.corrupt = None  # why the record was set aside at start(), for the log
        self.marks = {}
        self.own_id = 0
        self.retired_s = 0
        self.saves = 0  # records written since boot
        self.record_size = 0  # bytes of the last record written (header included)
        self._entries = None  # None until start(): never save an empty book over a real one
        self._dirty = False  # metered energy not yet on flash
        self._flushed_s = 0

    # -- start-up ---------------------------------------------------------------

    def start(self, now_s):
        """Load the book and apply the start-up rules; -> report entries still due."""
        self.corrupt = None
        store.make_folder(self.path)
        try:
            loaded = book_record.decode(store.load(self.path))
        except store.CorruptRecord as exc:
            # Safe state: no contracts, so nothing executes; the file is kept for a
            # post-mortem, and the next save starts a fresh record (no crash loop).
            self.corrupt = "contract record set aside as %s.corrupt: %s" % (self.path, exc)
            store.set_aside(self.path)
            loaded = book_record.decode(None)
        self.marks, self.own_id, self.retired_s, self._entries = loaded
        self._dirty = False
        self._flushed_s = now_s
        self._lapse(now_s, True)
        return self.reports()

    def expire(self, now_s):
        """Live contracts that never became Active and whose window ended ->
        CompletedUnknownOutcome (queued for reporting). Call it now and then, so
        an unconfirmed contract does not hold a slot forever; -> those contracts."""
        return self._lapse(now_s, False)

    def _lapse(self, now_s, active):
        """Live contracts whose window ended -> CompletedUnknownOutcome; Active ones
        too only if `active` (at start-up: they ran while the device was off)."""
        lapsed = []
        for e in self._held():
            c = e.contract
            if c.live and c.end_unix_s <= now_s and (active or c.state != mc.ACTIVE):
                lapsed.append((e, c.state))
        for e, _old in lapsed:
            e.contract.advance(mc.COMPLETED_UNKNOWN_OUTCOME, mc.DEVICE)
            e.reported = False
        if lapsed:
            try:
                self._save()
            except Exception:
                for e, old in lapsed:
                    e.contract.state = old
                raise
        return [e.contract for e, _old in lapsed]

    # -- contracts --------------------------------------------------------------

    def add(self, contract, buyer_id, confirm_id, price):
        """Persist a new contract (Received or Confirmed); -> the book's copy of it."""
        entries = self._held()
        if not isinstance(contract, mc.MarketContract):
            raise BookError("not a MarketContract: %r" % (contract,))
        if contract.state not in (mc.RECEIVED, mc.CONFIRMED):
            raise BookError("a new contract is Received or Confirmed, not %s" % contract.state_name)
        if self._find(contract.contract_id) is not None:
            raise BookError(
                "contract %s is already held: one bid makes one contract" % contract.contract_id
            )
        if contract.end_unix_s <= self.retired_s:
            raise BookError(
                "contract %s ends before contracts already retired (%d): refused as a replay"
                % (contract.contract_id, self.retired_s)
            )
        _check_int("buyer_id", buyer_id, _U32)
        _check_int("confirm_id", confirm_id, _U64)
        if (
            isinstance(price, bool)
            or not isinstance(price, (int, float))
            or not -1e15 < price < 1e15
        ):
            raise BookError("price must be a finite number, not %r" % (price,))
        retired = self.retired_s
        if len(entries) >= self.max_contracts:
            victim = None
            for e in entries:
                if not e.contract.live and e.reported:
                    if victim is None or e.contract.end_unix_s < victim.contract.end_unix_s:
                        victim = e
            if victim is None:
                raise BookFull("contract book full: %d live or unreported contracts" % len(entries))
            entries = [e for e in entries if e is not victim]
            retired = max(retired, victim.contract.end_unix_s)
        copy = mc.MarketContract.from_bytes(contract.to_bytes())  # the book owns its state
        new = Entry(copy, buyer_id, confirm_id, float(price))
        old = (self._entries, self.retired_s)
        self._entries, self.retired_s = entries + [new], retired
        try:
            self._save()
        except Exception:
            self._entries, self.retired_s = old
            raise
        return copy

    def advance(self, contract_id, state):
        """A state change on the device's behalf, persisted before returning."""
        return self._advance(contract_id, state, mc.DEVICE)

    def accept_buyer_state(self, contract_id, state):
        """The buyer's state change (Confirmed, TerminatedByAtn, ...), persisted."""
        return self._advance(contract_id, state, mc.BUYER)

    def _advance(self, contract_id, state, by):
        e = self._entry(contract_id)
        c = e.contract
        if c.state == state:
            return c  # a repeated message (a re-sent BidConfirm): already so, no write
        # A stale one (BidConfirm for an Active contract) raises ContractError.
        old = c.advance(state, by)  # raises ContractError when the rules forbid it
        reported = e.reported
        e.reported = False  # a done contract's outcome goes to the hub
        try:
            self._save()
        except Exception:
            c.state, e.reported = old, reported
            raise
        return c

    def add_energy(self, contract_id, energy_wh, now_s):
        """Count energy_wh delivered for an Active contract; -> True when this call saved."""
        e = self._entry(contract_id)
        if e.contract.state != mc.ACTIVE:
            raise BookError(
                "contract %s is %s: only Active contracts meter energy"
                % (contract_id, e.contract.state_name)
            )
        wh = energy_wh
        if isinstance(wh, bool) or not isinstance(wh, (int, float)) or not 0 <= wh < 1e12:
            raise BookError("delivered energy must be a finite number of Wh >= 0, not %r" % (wh,))
        e.delivered_wh += wh
        self._dirty = True
        if now_s - self._flushed_s >= self.flush_s:
            self._save()
            self._flushed_s = now_s
            return True
        return False

    def flush(self):
        """Persist metered energy now (e.g. before a planned restart); -> True if saved."""
        if self._dirty:
            self._save()
            return True
        return False

    def reported(self, contract_id):
        """The hub has the outcome of this done contract: persisted, then prunable."""
        e = self._entry(contract_id)
        if e.contract.live:
            raise BookError("contract %s is still %s" % (contract_id, e.contract.state_name))
        if e.reported:
            return
        e.reported = True
        try:
            self._save()
        except Exception:
            e.reported = False
            raise

    def save_marks(self, marks, own_id):
        """Persist ETP high-water marks: ReplayGuard.marks() and the device's own
        last message_id (restart with MessageIds(now_ms, floor=book.own_id) and
        ReplayGuard.restore(book.marks)). Call it now and then, not per frame.

        Marks only rise: a lower value than the one held is ignored. -> True if saved.
        """
        self._held()
        merged = dict(self.marks)
        for sender, high in marks.items():
            _check_int("sender key id", sender, _U32)
            _check_int("message_id", high, _U64)
            if high > merged.get(sender, -1):
                merged[sender] = high
        _check_int("own_id", own_id, _U64)
        if len(merged) > MAX_MARKS:
            raise BookError("%d replay marks: at most %d are persisted" % (len(merged), MAX_MARKS))
        own_id = max(own_id, self.own_id)
        if merged == self.marks and own_id == self.own_id:
            return False
        old = (self.marks, self.own_id)
        self.marks, self.own_id = merged, own_id
        try:
            self._save()
        except Exception:
            self.marks, self.own_id = old
            raise
        return True

    # -- queries ----------------------------------------------------------------

    def get(self, contract_id):
        """The contract (change it only through the book), or None."""
        e = self._find(contract_id)
        return None if e is None else e.contract

    def entry(self, contract_id):
        """The contract's Entry (buyer_id, confirm_id, price, delivered_wh, reported), or None."""
        return self._find(contract_id)

    def delivered_wh(self, contract_id):
        return self._entry(contract_id).delivered_wh

    def contracts(self):
        return [e.contract for e in self._held()]

    def live(self):
        return [e.contract for e in self._held() if e.contract.live]

    def due(self, now_s):
        """Confirmed contracts inside their window: the caller starts them (-> Active)."""
        return [
            e.contract
            for e in self._held()
            if e.contract.state == mc.CONFIRMED
            and e.contract.start_unix_s <= now_s < e.contract.end_unix_s
        ]

    def ended(self, now_s):
        """Active contracts whose window is over: the caller judges the outcome."""
        return [
            e.contract
            for e in self._held()
            if e.contract.state == mc.ACTIVE and e.contract.end_unix_s <= now_s
        ]

    def mode(self, now_s):
        """What the inverter should do now, from the Active contracts inside their window:
        "idle", "discharging", "charging", or "failsafe" after a device failure."""
        if self.failsafe:
            return "failsafe"
        watts = 0
        for e in self._held():
            c = e.contract
            if c.state == mc.ACTIVE and c.start_unix_s <= now_s < c.end_unix_s:
                watts += c.avg_power_watts
        return "discharging" if watts > 0 else "charging" if watts < 0 else "idle"

    def reports(self):
        """(contract, buyer_id, confirm_id) of done contracts not yet reported to the hub."""
        return [e.report() for e in self._held() if not e.contract.live and not e.reported]

    def __len__(self):
        return len(self._held())

    def __contains__(self, contract_id):
        return self._find(contract_id) is not None

    # -- internals --------------------------------------------------------------

    def _held(self):
        if self._entries is None:
            raise RuntimeError("ContractBook.start() first: it loads the saved contracts")
        return self._entries

    def _find(self, contract_id):
        for e in self._held():
            if e.contract.contract_id == contract_id:
                return e
        return None

    def _entry(self, contract_id):
        e = self._find(contract_id)
        if e is None:
            raise BookError("no contract %s in the book" % (contract_id,))
        return e

    def _save(self):
        chunks = book_record.encode(self.marks, self.own_id, self.retired_s, self._entries)
        store.save(self.path, chunks)
        self.saves += 1
        self.record_size = store.HEADER_SIZE + sum([len(c) for c in chunks])
        self._dirty = False


def _check_int(name, value, end):
    # MicroPython's struct silently truncates out-of-range ints: check first.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= end:
        raise BookError("%s must be an integer 0..%d, not %r" % (name, end, value))
