"""What a settled contract pays, and the batch that carries the payments on chain.

The settlement rule (what a contract that reached a final state pays the battery's owner):

    paid kWh = min(metered kWh, promised kWh)      when the battery reported its meter
             = promised kWh                        CompletedSuccess with no reading
             = 0                                   any other final state with no reading
    amount   = price (c/kWh) x paid kWh, in the mint's base units, rounded half up

It is the rule the store's device_reputation view already counts by (hub/store/schema.py
V2), so what a battery is paid and what its reputation credits it with never disagree:
energy is paid when a meter counted it, whoever ended the contract; a success the battery
did not meter is taken at its word (it said success); a contract that ended unobserved,
stopped or failed without a reading pays nothing. More than the promise is never paid:
the buyer bought the promised kWh. Amounts are exact decimals of the stored floats
(Decimal(repr(x))), so the same rows always give the same integers on any machine.

A batch is every final contract whose slot starts in one window of `batch_s` seconds
(aligned on multiples of batch_s since 1970, like slots), split into chunks of at most
`max_batch` contracts in contract id order. A window is batched once it has ended (no
contract can start in it any more: contracts are made before their slot starts) and all
of its contracts are final. So a batch is a pure function of the store: its id
"<hub>.<window start>.<chunk>" and its hash can be computed again from the contracts,
which is what lets reconciliation match the chain's memos to contracts after the journal
is lost (hub/integrations/settlement/recovery.py).

Canonical records: one JSON object per contract, keys sorted, no spaces, lines sorted by
contract id, each line ending in "\\n"; the batch hash is the SHA-256 of those bytes:

    {"amount":..,"buyer":..,"contract":"..","device":..,"kwh":..,"owner":"..","payer":"..","price":..}

payer and owner (base58 public keys) are in the record: the hash pins where the money went.

Payments: per (payer, owner) the batch's amounts are summed into one SPL transfer; zero
amounts are not sent. Each part is one transaction: one payer, at most PER_TX owners
(sorted), numbered 1..n over the batch, with the memo

    gridbid:<batch id>:<sha256 hex of the records>:<part>/<parts>

(the issue's memo with the part appended, so reconciliation knows which parts landed).
"""

import hashlib
import json
import re
from collections import namedtuple
from decimal import ROUND_HALF_UP, Decimal

from protocol.contract import LIVE, STATE_NAMES

FINAL_STATES = tuple(name for i, name in enumerate(STATE_NAMES) if i not in LIVE)
SUCCESS = "CompletedSuccess"
# Each payment is an idempotent create of the owner's token account plus a transfer: 91
# bytes of a legacy transaction. 8 of them, the memo and the fixed accounts come to
# ~1,160 of the 1,232 bytes a packet carries (transactions.py checks every one it signs).
PER_TX = 8
MEMO_PREFIX = "gridbid:"
_MEMO = re.compile(r"gridbid:([A-Za-z0-9_.\-]+):([0-9a-f]{64}):(\d+)/(\d+)")

Part = namedtuple("Part", "number payer payments")  # payments: ((owner, amount), ...)
Batch = namedtuple("Batch", "id window chunk records digest lines parts")


def promised_kwh(row):
    return abs(row["avg_watts"]) * row["duration_s"] / 3_600_000


def paid_kwh(state, promised, delivered):
    """The settlement rule above. Raises ValueError for a live contract."""
    if state not in FINAL_STATES:
        raise ValueError("a %s contract is not settled yet" % state)
    if delivered is not None:
        return min(delivered, promised)
    return promised if state == SUCCESS else 0.0


# The rule above in SQL, per contract row: what earned() sums (one query per battery,
# not a row per contract into Python: a battery makes ~35,000 contracts a year).
_PROMISED = "abs(avg_watts) * duration_s / 3600000.0"
_PAID = ("CASE WHEN delivered_kwh IS NOT NULL THEN min(delivered_kwh, %s) WHEN state = '%s' "
         "THEN %s ELSE 0 END" % (_PROMISED, SUCCESS, _PROMISED))  # fmt: skip


def earned(store, device):
    """(cents, contracts): what battery `device`'s final contracts pay its owner by the
    rule above, paid yet or not (the chain rounds each contract to its base units), and
    how many final contracts that is."""
    row = store.rows(
        "SELECT coalesce(sum(price * (%s)), 0) AS cents, count(*) AS n FROM contracts "
        "WHERE device = ? AND state IN (%s)" % (_PAID, ",".join("?" * len(FINAL_STATES))),
        (device,) + FINAL_STATES,
    )[0]
    return row["cents"], row["n"]


def units_per_cent(decimals, cents_per_credit):
    """Base units of the mint per cent: 6 decimals, 1 credit = 100 cents -> 10,000."""
    units, rest = divmod(10**decimals, cents_per_credit)
    if rest or units < 1:
        raise ValueError("10**decimals (%d) is not a whole number of units per cent" % 10**decimals)
    return units


def amount(price, kwh, per_cent):
    """price c/kWh x kWh in base units, rounded half up (exact decimal arithmetic)."""
    value = Decimal(repr(float(price))) * Decimal(repr(float(kwh))) * per_cent
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def window_of(start, batch_s):
    return start // batch_s * batch_s


def batch_id(name, window, chunk):
    return "%s.%d.%d" % (name, window, chunk)


def record(row, payer, owner, per_cent):
    """The canonical record of a final contract row (hub.store.contracts' columns)."""
    kwh = paid_kwh(row["state"], promised_kwh(row), row["delivered_kwh"])
    return {
        "contract": row["id"], "buyer": row["buyer"], "device": row["device"],
        "kwh": kwh, "price": row["price"], "amount": amount(row["price"], kwh, per_cent),
        "payer": str(payer), "owner": str(owner),
    }  # fmt: skip


def canonical(records):
    """The records as canonical JSON lines (bytes) and their SHA-256 hex."""
    lines = "".join(
        json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n"
        for r in sorted(records, key=lambda r: r["contract"])
    ).encode()
    return lines, hashlib.sha256(lines).hexdigest()


def parts(records):
    """The payments of a batch as numbered parts (see the module doc)."""
    totals = {}
    for r in records:
        if r["amount"] > 0:
            key = (r["payer"], r["owner"])
            totals[key] = totals.get(key, 0) + r["amount"]
    out = []
    for payer in sorted({p for p, _o in totals}):
        owed = sorted((o, a) for (p, o), a in totals.items() if p == payer)
        for i in range(0, len(owed), PER_TX):
            out.append(Part(len(out) + 1, payer, tuple(owed[i : i + PER_TX])))
    return out


def make_batch(name, window, chunk, records):
    lines, digest = canonical(records)
    return Batch(batch_id(name, window, chunk), window, chunk, records, digest, lines,
                 parts(records))  # fmt: skip


def chunks(rows, max_batch):
    """A window's contract rows in contract id order, max_batch at a time."""
    rows = sorted(rows, key=lambda r: r["id"])
    return [rows[i : i + max_batch] for i in range(0, len(rows), max_batch)]


def memo(batch, part):
    return "%s%s:%s:%d/%d" % (MEMO_PREFIX, batch.id, batch.digest, part.number, len(batch.parts))


def parse_memo(text):
    """(batch id, digest, part, parts) from a memo (or an RPC node's "[len] memo; ..."
    rendering of a transaction's memos), or None when it carries no gridbid memo."""
    found = _MEMO.search(text or "")
    if found is None:
        return None
    return found.group(1), found.group(2), int(found.group(3)), int(found.group(4))
