"""The ETP codec timing loop, portable: runs unchanged on CPython and MicroPython.

Measures frames per second for
  seal: codec.seal() of pre-built BID messages (encode + HMAC tag; the
        message.bid() construction is done beforehand and not timed), and
  open: codec.open() of pre-sealed frames (length/header checks, HMAC verify,
        body decode + range checks, expiry and replay check).
Frames are handled in batches of BATCH distinct message_ids; each open batch
gets a fresh Codec (so a fresh ReplayGuard), made outside the timed region.
The garbage collector runs as it normally would. Each measurement is ROUNDS
rounds; the reported rate is the median round's (min and max are reported too).

The batch is small on purpose: MicroPython's allocator (gc_alloc) searches the
heap linearly for free blocks, so the more small objects a program keeps live,
the slower every allocation. A device keeps a handful of frames around, not
thousands; with --batch 1000 the MicroPython figures drop by half or more
(CPython's do not move).

bench/codec.py runs this in-process on CPython and as a subprocess on the
MicroPython VM; it can also be run directly:

    MICROPYPATH=.frozen:$PWD:$PWD/bench .venv/bin/micropython bench/codec_loop.py 100000
    .venv/bin/python bench/codec_loop.py --seconds 1.5

Arguments: N frames per measurement, or --seconds S (run whole batches until
S seconds have been timed; the default is 1.5 s); --batch B. Prints one JSON line.
"""

import gc
import json
import sys

from protocol import auth, frame, message

try:  # MicroPython
    from time import ticks_diff, ticks_us

    def _elapsed_s(t0):
        return ticks_diff(ticks_us(), t0) / 1e6

    _clock = ticks_us
except ImportError:  # CPython
    from time import perf_counter as _clock

    def _elapsed_s(t0):
        return _clock() - t0


BATCH = 100
NOW_MS = 1767225600000  # 2026-01-01T00:00:00Z; frames are sealed and opened at this time
KEY_ID = 7  # the aggregator, which seals for the battery with their pair key
PEER_ID = 1001  # the battery, which opens with the key it holds under KEY_ID
DEFAULT_SECONDS = 1.5
ROUNDS = 5  # the figure is the median round, so one disturbed round does not move it


def _keyrings():
    """(the aggregator's, the battery's): each holds their pair key under the other's id."""
    pair, group = b"k" * 32, b"g" * 32
    return auth.Keyring({PEER_ID: pair}, group=group), auth.Keyring({KEY_ID: pair}, group=group)


def _messages(count):
    ids = message.MessageIds(NOW_MS)
    return [message.bid(ids.next(), 1000 + i, 12.5 + i % 7, 3.25) for i in range(count)]


def _batch(method, items):
    """Seconds that method(item, NOW_MS) takes for all the items (codec.seal or .open)."""
    t0 = _clock()
    for item in items:
        method(item, NOW_MS)
    return _elapsed_s(t0)


def _measure(name, make_codec, items, frames, seconds):
    """ROUNDS rounds of batches of codec.<name>, together `frames` frames or `seconds` timed.

    -> (frames, seconds, sorted per-round rates in frames/s)
    """
    gc.collect()
    _batch(getattr(make_codec(), name), items)  # warm-up, not counted
    total_n, total_s, rates = 0, 0.0, []
    for _ in range(ROUNDS):
        done, spent = 0, 0.0
        while (done < frames / ROUNDS) if frames else (spent < seconds / ROUNDS or not done):
            spent += _batch(getattr(make_codec(), name), items)
            done += len(items)
        total_n += done
        total_s += spent
        rates.append(done / spent)
    rates.sort()
    return total_n, total_s, rates


def run(frames=0, seconds=DEFAULT_SECONDS, batch=BATCH):
    """Measure seal and open; frames=0 means run for `seconds` each. -> dict."""
    sealing, opening = _keyrings()
    make = {
        "seal": lambda: frame.Codec(sealing, key_id=KEY_ID, peer=PEER_ID),
        "open": lambda: frame.Codec(opening, key_id=PEER_ID),
    }
    msgs = _messages(batch)
    sealer = make["seal"]()
    sealed = [sealer.seal(msg, NOW_MS) for msg in msgs]
    impl = sys.implementation
    result = {
        "runtime": impl.name,
        "version": ".".join(str(v) for v in impl.version[:3]),
        "batch": batch,
        "rounds": ROUNDS,
    }
    for name, items in (("seal", msgs), ("open", sealed)):
        n, s, rates = _measure(name, make[name], items, frames, seconds)
        result[name + "_frames"] = n
        result[name + "_s"] = s
        result[name + "_per_s"] = rates[len(rates) // 2]  # the median round
        result[name + "_min"] = rates[0]
        result[name + "_max"] = rates[-1]
    return result


def _parse(argv):
    frames, seconds, batch = 0, DEFAULT_SECONDS, BATCH
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-t", "--seconds"):
            seconds = float(args.pop(0))
        elif arg in ("-b", "--batch"):
            batch = int(args.pop(0))
        else:
            frames = int(arg)
    return frames, seconds, batch


def main(argv):
    frames, seconds, batch = _parse(argv)
    print(json.dumps(run(frames, seconds, batch)))


if __name__ == "__main__":
    main(sys.argv[1:])
