"""Power cuts during a contract lifecycle, on the MicroPython VM's real LittleFS.

    micropython tests/firmware/power_cut_vm.py [lfs2|fat] [rename|overwrite] [RANDOM_POINTS] [SEED]
                                      [BLOCK_SIZE BLOCKS]

A ContractBook lives on os.VfsLfs2 (or os.VfsFat), mounted on Flash: a block
device written in Python over a bytearray, as a board's flash driver would be.
One clean run of the lifecycle counts the flash operations (block writes and
erases) and records the book after every save. Then, for every operation k,
and for RANDOM_POINTS random (k, torn size) pairs, the lifecycle runs again
from a fresh filesystem and the power fails at operation k: that write lands
only partly (nothing, half, or a random prefix; random points may also leave
noise), and from then on the flash answers nothing. "Reboot" mounts a fresh
filesystem over the surviving bytes and checks it against what the book's
calls that returned before the cut promised (class Promises):

  loads     the record loads (never CorruptRecord, never set aside)
  lost      every contract an add() that returned put there is there, in a
            state at least as advanced as the last change that returned
            (only the add() under way may have pruned one)
  corrupt   terms, buyer and BidConfirm ids are intact
  twice     no contract that a returned call made done is live again
  energy    delivered Wh >= the last save's, and lost only within the last
            FLUSH_S + METER_S seconds of metering; <= what was metered
  reported  a contract reported to the hub stays reported
  marks     replay marks, own message_id and retired_s never go back
  phantom   no contract appears that no add() put there, or that a returned
            add() pruned
  torn      the book equals the last completed save or the interrupted one
  startup   start(now) at the cut time, then far later: contracts ended while
            off are CompletedUnknownOutcome and reported, the others keep
            their state and Wh, and mode() follows the Active ones

"overwrite" replaces store.save with writing the record in place (no temp
file, no rename) to show that this harness does catch a losing strategy.
The last line is "RESULT {json}" for tests/firmware/test_power_cut.py.
"""

import json
import os
import random
import sys
import time

import contracts
import store

from protocol import contract as mc

BLOCK = 512
BLOCKS = 64
MOUNT = "/flash"
PATH = MOUNT + "/contracts.bin"
EIO = -5  # a block device reports errors to the filesystem as -errno
ERASED = b"\xff" * BLOCK

SLOT = 900
FLUSH_S = 30
METER_S = 10
S = 1763700300  # a 15-minute slot boundary
KINDS = ("nothing", "half", "random", "noise")


class Flash:
    """NOR-like flash over a bytearray, with the power failing at operation cut_at."""

    def __init__(self, data, cut_at=-1, torn="nothing", rng=None):
        self.data = data
        self.ops = 0  # block writes + erases so far
        self.erases = 0
        self.cut_at = cut_at
        self.torn = torn
        self.rng = rng
        self.dead = False

    def _powered(self, start, new):
        """True if this operation happens; the one at the cut lands partly, then none.

        Allocates nothing: a file finaliser can write while the heap is locked."""
        if self.dead:
            return False
        k = self.ops
        self.ops += 1
        if k != self.cut_at:
            return True
        self.dead = True
        n = len(new)
        size = n // 2 if self.torn == "half" else self.rng.getrandbits(16) % (n + 1)
        if self.torn == "nothing":
            size = 0
        for i in range(size):  # noise: bits the interrupted write left undefined
            self.data[start + i] = self.rng.getrandbits(8) if self.torn == "noise" else new[i]
        return False

    def readblocks(self, block, buf, offset=0):
        if self.dead:
            return EIO
        start = block * BLOCK + offset
        buf[:] = self.data[start : start + len(buf)]
        return 0

    def writeblocks(self, block, buf, offset=None):
        start = block * BLOCK + (offset or 0)
        if not self._powered(start, buf):
            return EIO
        self.data[start : start + len(buf)] = buf
        return 0

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return len(self.data) // BLOCK
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase
            start = arg * BLOCK
            if not self._powered(start, ERASED):
                return EIO
            self.erases += 1
            self.data[start : start + BLOCK] = ERASED
        return 0


_PLUGGED = [None]


def mount(flash, fs):
    """Mount flash at MOUNT. The previous flash is unplugged first: a file left
    open on it by a cut may still be flushed by its finaliser, into the same bytes."""
    if _PLUGGED[0] is not None:
        _PLUGGED[0].dead = True
    _PLUGGED[0] = flash
    try:
        os.umount(MOUNT)
    except OSError:
        pass
    vfs = os.VfsLfs2(flash) if fs == "lfs2" else os.VfsFat(flash)
    os.mount(vfs, MOUNT)


_IMAGES = {}


def blank(fs):
    """A freshly formatted flash: one working buffer, refilled from a formatted image."""
    if fs not in _IMAGES:
        image = bytearray(BLOCK * BLOCKS)
        for b in range(BLOCKS):
            image[b * BLOCK : (b + 1) * BLOCK] = ERASED
        if fs == "lfs2":
            os.VfsLfs2.mkfs(Flash(image))
        else:
            os.VfsFat.mkfs(Flash(image))
        _IMAGES[fs] = (image, bytearray(len(image)))
    image, work = _IMAGES[fs]
    work[:] = image
    return work


def overwrite_save(path, payload):
    """The strategy the GUIDE saw fail on host files: write the record in place."""
    with open(path, "wb") as f:
        f.write(store.encode(payload))


# -- the lifecycle ------------------------------------------------------------


def terms(n, start, watts, state):
    return mc.MarketContract(
        mc.contract_id(42, 7 + n % 3, 1000 + n), "rt15gate5.hub.%d" % start, start, 15, watts,
        state,
    )  # fmt: skip


A = terms(0, S, 5000, mc.RECEIVED)
B = terms(1, S + SLOT, -3000, mc.CONFIRMED)
C = terms(2, S + 2 * SLOT, 2000, mc.RECEIVED)
D = terms(3, S + 4 * SLOT, 4000, mc.RECEIVED)
E = terms(4, S + 5 * SLOT, -2000, mc.CONFIRMED)
F = terms(5, S + 6 * SLOT, 1000, mc.CONFIRMED)
G = terms(6, S + 7 * SLOT, 1000, mc.CONFIRMED)


class Clock:
    now = 0


def refused(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type:
        return
    raise AssertionError("%s(%r) was not refused" % (exc_type.__name__, args))


def meter(book, c, seconds, clock):
    """Meter an Active contract every METER_S seconds at its contracted power."""
    for _ in range(seconds // METER_S):
        clock.now += METER_S
        book.add_energy(c.contract_id, abs(c.avg_power_watts) * METER_S / 3600, clock.now)


def lifecycle(book, clock):
    clock.now = S - 600
    book.start(clock.now)
    book.add(A, 7, 5001, 15.5)
    book.add(B, 8, 5002, 14.0)
    refused(contracts.BookError, book.add, A, 7, 5001, 15.5)  # one bid, one contract
    clock.now += 30
    book.accept_buyer_state(A.contract_id, mc.CONFIRMED)
    book.save_marks({7: 5001, 8: 5002}, S << 16)
    book.add(C, 9, 5003, 16.0)
    clock.now = S
    for c in book.due(clock.now):
        book.advance(c.contract_id, mc.ACTIVE)
    meter(book, A, 90, clock)
    book.save_marks({7: 5010}, (S << 16) + 40)
    clock.now = S + SLOT
    for c in book.ended(clock.now):
        book.advance(c.contract_id, mc.COMPLETED_SUCCESS)
    for c in book.due(clock.now):
        book.advance(c.contract_id, mc.ACTIVE)
    for c, _buyer, _confirm in book.reports():
        book.reported(c.contract_id)
    meter(book, B, 60, clock)
    book.accept_buyer_state(B.contract_id, mc.TERMINATED_BY_ATN)
    book.reported(B.contract_id)
    clock.now = S + 3 * SLOT
    book.expire(clock.now)  # C was never confirmed
    book.reported(C.contract_id)
    book.add(D, 7, 5020, 17.0)  # the book is full: prunes A
    book.add(E, 8, 5021, 15.0)  # prunes B
    book.add(F, 9, 5022, 15.0)  # prunes C
    refused(contracts.BookFull, book.add, G, 9, 5023, 15.0)
    refused(contracts.BookError, book.add, A, 7, 5001, 15.5)  # pruned, still refused
    book.accept_buyer_state(D.contract_id, mc.CONFIRMED)
    clock.now = S + 4 * SLOT
    book.advance(D.contract_id, mc.ACTIVE)
    meter(book, D, 40, clock)
    book.advance(D.contract_id, mc.TERMINATED_BY_SCADA)
    book.save_marks({7: 5030, 9: 5031}, (S << 16) + 90)


# -- snapshots and checks -----------------------------------------------------


def snapshot(book):
    """Everything the book promises to keep, as plain values."""
    held = {}
    for c in book.contracts():
        e = book.entry(c.contract_id)
        body = c.to_bytes()[2:]  # the terms, without version and state
        held[c.contract_id] = (c.state, e.delivered_wh, e.reported, e.buyer_id, e.confirm_id, body)
    return (held, sorted(book.marks.items()), book.own_id, book.retired_s)


EMPTY = ({}, [], 0, 0)


class Recorder:
    """Stands in for store.save: counts attempts, snapshots each completed save."""

    def __init__(self, save):
        self.save = save
        self.book = None
        self.attempts = 0
        self.snaps = [EMPTY]
        self.max_bytes = 0

    def __call__(self, path, payload):
        self.attempts += 1
        self.save(path, payload)
        self.snaps.append(snapshot(self.book))
        self.max_bytes = max(self.max_bytes, len(store.encode(payload)))


def rank(state):
    return state if state in mc.LIVE else 4


class Promises:
    """Stands between the lifecycle and the book: notes what each call that
    returned promised (the snapshot after it), and the metering history."""

    def __init__(self, book, clock):
        self.book = book
        self.clock = clock
        self.promised = EMPTY  # after the last call that returned
        self.flushed = EMPTY  # after the last call that returned and saved
        self.metered = []  # (time, contract id, total Wh) after each add_energy that returned
        self.last_meter = {}  # contract id -> time of its latest add_energy, returned or not
        self.pending = None  # the call under way

    def __getattr__(self, name):
        method = getattr(self.book, name)

        def call(*args):
            self.pending = (name, args)
            if name == "add_energy":
                self.last_meter[args[0]] = args[2]
            saves = self.book.saves
            result = method(*args)
            self.pending = None
            self.promised = snapshot(self.book)
            if self.book.saves != saves:
                self.flushed = self.promised
            if name == "add_energy":
                self.metered.append((args[2], args[0], self.book.delivered_wh(args[0])))
            return result

        return call

    def energy_floor(self, cid):
        """Wh that must survive: the last save's, and all but the last FLUSH_S
        seconds (+ one metering interval) of metering."""
        floor = self.flushed[0].get(cid, (0, 0.0))[1]
        limit = self.last_meter.get(cid, 0) - FLUSH_S - METER_S
        for t, metered, total in self.metered:
            if metered == cid and t <= limit and total > floor:
                floor = total
        return floor


def check(promises, before, after, loaded, memory):
    """The rebooted book (loaded) against what the calls that returned promised,
    the last completed save (before), the save the cut interrupted (after, None
    if none) and the book's memory at the cut (energy metered, saved or not)."""
    bad = []
    held = loaded[0]
    promised = promises.promised[0]
    pending = promises.pending or ("", ())
    for cid, was in promised.items():
        now = held.get(cid)
        if now is None:
            # only the add() under way may prune a contract
            if pending[0] != "add" or after is None or cid in after[0]:
                bad.append("lost")
            continue
        if now[3:] != was[3:]:
            bad.append("corrupt")
        if rank(now[0]) < rank(was[0]) or (was[0] not in mc.LIVE and now[0] != was[0]):
            bad.append("lost")
        if was[2] and not now[2]:
            bad.append("reported")  # would be reported twice
        if now[1] < promises.energy_floor(cid):
            bad.append("energy")
    for cid, now in held.items():
        was = promised.get(cid)
        if was is None and not (pending[0] == "add" and pending[1][0].contract_id == cid):
            bad.append("phantom")  # never added, or pruned by an add() that returned
        if was is not None and was[0] not in mc.LIVE and now[0] in mc.LIVE:
            bad.append("twice")
        if now[1] > memory[0].get(cid, (0, 0.0))[1]:
            bad.append("energy")  # more than was ever metered
    for theirs, ours in zip(loaded[1:], promises.promised[1:]):
        if theirs < ours:  # marks, own_id and retired_s only rise
            bad.append("marks")
    if loaded != before and loaded != after:
        bad.append("torn")
    return bad


def startup_checks(book, loaded, now_s):
    """start(now_s) applies the GridWorks start-up rules to the loaded book."""
    reports = [r[0].contract_id for r in book.start(now_s)]
    assert book.corrupt is None, book.corrupt
    for cid, (state, wh, reported, _b, _c, _t) in loaded[0].items():
        c = book.get(cid)
        if state in mc.LIVE and c.end_unix_s <= now_s:
            assert c.state == mc.COMPLETED_UNKNOWN_OUTCOME, "ended while off: %r" % c
            assert cid in reports, "not reported: %r" % c
        else:
            assert c.state == state, "%r was %s" % (c, mc.STATE_NAMES[state])
            assert (cid in reports) == (state not in mc.LIVE and not reported), "reports"
        assert book.delivered_wh(cid) == wh, "%r resumed with other Wh" % c
    watts = 0
    for c in book.live():
        if c.state == mc.ACTIVE and c.start_unix_s <= now_s < c.end_unix_s:
            watts += c.avg_power_watts
    assert book.mode(now_s) == ("discharging" if watts > 0 else "charging" if watts else "idle")


# -- driver -------------------------------------------------------------------


def new_book():
    return contracts.ContractBook(PATH, max_contracts=3, flush_s=FLUSH_S)


def run_once(fs, save, cut_at=-1, torn="nothing", rng=None):
    """The lifecycle on a fresh filesystem, the power failing at operation cut_at."""
    data = blank(fs)
    flash = Flash(data, cut_at, torn, rng)
    mount(flash, fs)
    recorder = store.save = Recorder(save)
    book = recorder.book = new_book()
    clock = Clock()
    promises = Promises(book, clock)
    try:
        lifecycle(promises, clock)
    except OSError:
        if not flash.dead:
            raise
    finally:
        store.save = save
    return data, flash, recorder, promises


def reboot(fs, data, now_s):
    mount(Flash(data), fs)
    book = new_book()
    book.start(now_s)
    return book


def ms():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)


def main(argv):
    global BLOCK, BLOCKS, ERASED
    fs = argv[1] if len(argv) > 1 else "lfs2"
    strategy = argv[2] if len(argv) > 2 else "rename"
    randoms = int(argv[3]) if len(argv) > 3 else 500
    random.seed(int(argv[4]) if len(argv) > 4 else 1)
    if len(argv) > 6:  # flash geometry: block size, block count
        BLOCK, BLOCKS = int(argv[5]), int(argv[6])
        ERASED = b"\xff" * BLOCK
    save = store.save if strategy == "rename" else overwrite_save
    t0 = ms()

    _data, flash, ref, promises = run_once(fs, save)
    ops, erases = flash.ops, flash.erases
    assert ref.snaps[-1] == snapshot(promises.book) == promises.promised

    points = [(k, kind) for k in range(ops) for kind in ("nothing", "half")]
    for _ in range(randoms):
        points.append((random.getrandbits(16) % ops, KINDS[2 + random.getrandbits(1)]))

    failures = {}
    outcomes = {"old": 0, "new": 0}
    examples = []
    failed = 0  # cut points with any failure
    for k, kind in points:
        data, flash, rec, promises = run_once(fs, save, k, kind, random)
        now_s = promises.clock.now
        assert flash.dead, "cut point %d was never reached" % k
        completed = len(rec.snaps) - 1
        assert rec.snaps == ref.snaps[: completed + 1], "the lifecycle is not deterministic"
        before = rec.snaps[-1]
        after = ref.snaps[completed + 1] if rec.attempts > completed else None
        bad, detail = [], ""
        try:
            book = reboot(fs, data, 0)  # 0: before every window, start() changes nothing
            if book.corrupt:
                raise store.CorruptRecord(book.corrupt)
            loaded = snapshot(book)
            bad = check(promises, before, after, loaded, snapshot(promises.book))
            if loaded == before:
                outcomes["old"] += 1
            elif loaded == after:
                outcomes["new"] += 1
            for when in (now_s, now_s + 100 * SLOT):  # at the cut, then long after
                startup_checks(reboot(fs, data, 0), loaded, when)
                loaded = snapshot(reboot(fs, data, 0))
        except (store.CorruptRecord, OSError) as exc:
            bad.append("loads")
            detail = str(exc)
        except AssertionError as exc:
            bad.append("startup")
            detail = str(exc)
        for name in bad:
            failures[name] = failures.get(name, 0) + 1
        failed += 1 if bad else 0
        if bad and len(examples) < 10:
            examples.append([k, kind, ",".join(bad), detail])

    result = {
        "fs": fs,
        "strategy": strategy,
        "flash_blocks": BLOCKS,
        "block_size": BLOCK,
        "flash_ops_per_lifecycle": ops,
        "erases_per_lifecycle": erases,
        "saves_per_lifecycle": ref.attempts,
        "record_bytes_max": ref.max_bytes,
        "cut_points": 2 * ops,
        "random_points": randoms,
        "outcomes": outcomes,
        "failures": failures,
        "losses": failed,
        "examples": examples,
        "seconds": (ms() - t0) / 1000,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
