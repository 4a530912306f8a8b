"""MarketContract: the terms a battery and a buyer agreed on, and their lifecycle.

Terms (GridWorks' MarketContract): ContractId, MarketSlotName, StartUnixS,
DurationMinutes, AvgPowerWatts (positive = the battery discharges to the
grid, negative = it charges). They never change; only `state` does, and
only through advance(), which enforces who may set which state from where.

The 10 states are GridWorks' ContractStatus:

    Created --device--> Received --buyer--> Confirmed --device--> Active
    any live state --buyer--> TerminatedByAtn      (buyer ends it early)
    any live state --device--> TerminatedByScada   (device ends it early)
    Active --either--> CompletedSuccess | CompletedFailureByScada | CompletedFailureByAtn
    any live state --either--> CompletedUnknownOutcome (window ended unobserved,
                                e.g. while the device was off)

Only the buyer side creates (MarketContract.create) and confirms; only the
device marks Received and Active. Done states are final.

Market slot names follow GridWorks: "<market type>.<market maker>.<start s>",
market type "rt<length>gate<gate>" in minutes ("rt15gate5": 15-minute slots,
gate closes 5 minutes before), or with an "s" suffix for seconds, as demos use
("rt30sgate5s"). Slots start on multiples of their length since 1970, and a
contract starts at its slot's start and lasts at most the slot.
"""

import hashlib
import struct

from protocol.compat import const, hexlify, unhexlify
from protocol.errors import ContractError

CREATED = const(0)
RECEIVED = const(1)
CONFIRMED = const(2)
ACTIVE = const(3)
TERMINATED_BY_ATN = const(4)
TERMINATED_BY_SCADA = const(5)
COMPLETED_UNKNOWN_OUTCOME = const(6)
COMPLETED_SUCCESS = const(7)
COMPLETED_FAILURE_BY_SCADA = const(8)
COMPLETED_FAILURE_BY_ATN = const(9)

STATE_NAMES = (
    "Created",
    "Received",
    "Confirmed",
    "Active",
    "TerminatedByAtn",
    "TerminatedByScada",
    "CompletedUnknownOutcome",
    "CompletedSuccess",
    "CompletedFailureByScada",
    "CompletedFailureByAtn",
)
LIVE = (CREATED, RECEIVED, CONFIRMED, ACTIVE)
# A battery reports how a contract ended as a TERMINATE answering the buyer's BidConfirm,
# its termination_code the final state's code here; the buyer reads it back with the same
# table (hub/ledger.py). The one table of ETP outcome codes.
TERM_CONTRACT_SUCCESS = const(10)  # CompletedSuccess
TERM_CONTRACT_FAILURE = const(11)  # CompletedFailureByScada: under-delivered
TERM_CONTRACT_UNKNOWN = const(12)  # CompletedUnknownOutcome: ended while the device was off
TERM_CONTRACT_STOPPED = const(13)  # TerminatedByScada: a device failure stopped it
OUTCOME_CODES = {
    COMPLETED_SUCCESS: TERM_CONTRACT_SUCCESS,
    COMPLETED_FAILURE_BY_SCADA: TERM_CONTRACT_FAILURE,
    COMPLETED_UNKNOWN_OUTCOME: TERM_CONTRACT_UNKNOWN,
    TERMINATED_BY_SCADA: TERM_CONTRACT_STOPPED,
}

BUYER = "buyer"  # the aggregator / market side (GridWorks' AtomicTNode)
DEVICE = "device"  # the battery controller (GridWorks' SCADA)
_EITHER = (BUYER, DEVICE)

# new state -> (who may set it, states it may follow)
RULES = {
    RECEIVED: ((DEVICE,), (CREATED,)),
    CONFIRMED: ((BUYER,), (RECEIVED,)),
    ACTIVE: ((DEVICE,), (CONFIRMED,)),
    TERMINATED_BY_ATN: ((BUYER,), LIVE),
    TERMINATED_BY_SCADA: ((DEVICE,), LIVE),
    COMPLETED_UNKNOWN_OUTCOME: (_EITHER, LIVE),
    COMPLETED_SUCCESS: (_EITHER, (ACTIVE,)),
    COMPLETED_FAILURE_BY_SCADA: (_EITHER, (ACTIVE,)),
    COMPLETED_FAILURE_BY_ATN: (_EITHER, (ACTIVE,)),
}

# Binary form: ">BB16sQIiB" (version, state, id, start, duration s, watts, name length),
# then the slot name: 35 fixed bytes.
_BINARY_VERSION = const(1)
_BINARY_FIXED = const(35)
MAX_SLOT_NAME = const(96)


def contract_id(device_id, buyer_id, message_id):
    """The ContractId for a device's acceptance of a bid: a UUID (version 8,
    RFC 9562) from SHA-256 of the ids, so buyer and device derive the same id
    independently, and the same bid can never make two contracts.

    message_id is the bid's, and buyer_id the bidder's key id: message ids are only
    unique per sender, so two buyers' bids may carry the same message_id.
    """
    ids = struct.pack(">QIQ", device_id, buyer_id, message_id)
    raw = bytearray(hashlib.sha256(b"gridbid-contract" + ids).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return _uuid_str(bytes(raw))


def _uuid_str(raw):
    h = hexlify(raw)
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def purchase_terms(slot_s, kwh, kw):
    """(duration s, avg watts) of kWh bought at kw: at kw, but never past the slot
    (too little power for the energy raises the watts to fit it)."""
    duration = min(slot_s, max(1, round(kwh / kw * 3600)))
    return duration, round(kwh * 1000 * 3600 / duration)


def purchase(device_id, buyer_id, message_id, slot_s, gate_s, market_maker, start, kwh, kw):
    """The Created contract a device's acceptance of a bid (message_id) makes, as battery
    and buyer each derive it: same ContractId, slot name and terms, without sending them."""
    duration, watts = purchase_terms(slot_s, kwh, kw)
    return MarketContract.create(
        BUYER, contract_id(device_id, buyer_id, message_id),
        slot_name(slot_s, gate_s, market_maker, start), start, duration / 60, watts,
    )  # fmt: skip


def slot_name(slot_s, gate_s, market_maker, start):
    """The slot's name; its market type is "rt15gate5" (minutes) or, for lengths that
    are not whole minutes, "rt30sgate5s"."""
    if slot_s % 60 == 0 and gate_s % 60 == 0:
        kind = "rt%dgate%d" % (slot_s // 60, gate_s // 60)
    else:
        kind = "rt%dsgate%ds" % (slot_s, gate_s)
    name = "%s.%s.%d" % (kind, market_maker, start)
    parse_slot_name(name)  # one grammar: refuse what the parser would refuse
    return name


def parse_slot_name(name):
    """Parse "rt15gate5.hub1.1763700300" into (slot_s, gate_s, market_maker, start_s)."""
    try:
        first = name.index(".")
        last = name.rindex(".")
        kind, maker, start = name[:first], name[first + 1 : last], int(name[last + 1 :])
        if not kind.startswith("rt") or "gate" not in kind:
            raise ValueError
        # "15" is minutes, "30s" seconds; exactly two parts, or ValueError.
        slot_s, gate_s = [
            int(t[:-1]) if t.endswith("s") else int(t) * 60 for t in kind[2:].split("gate")
        ]
    except (AttributeError, TypeError, ValueError):
        raise ContractError(
            "market slot name %r is not <rtNgateG>.<market maker>.<start s>" % (name,)
        ) from None
    if not maker or first == last or len(name) > MAX_SLOT_NAME:
        raise ContractError("market slot name %r lacks a market maker or is too long" % name)
    if slot_s <= 0 or not 0 <= gate_s < slot_s or start < 0 or start % slot_s:
        raise ContractError("slot %r: start must be a multiple of a positive slot length" % name)
    return slot_s, gate_s, maker, start


def slot_length(grid, start):
    """The length of the slot at `start` on a grid (before s, from s, after s): slots
    of `before` until `from`, a multiple of both, and of `after` from it on."""
    return grid[0] if start < grid[1] else grid[2]


def next_slot(grid, now_s):
    """The start of the first slot after now_s."""
    length = slot_length(grid, now_s)
    return (int(now_s) // length + 1) * length


class MarketContract:
    """One contract's terms and state. Build new ones with create()."""

    def __init__(
        self, contract_id, market_slot_name, start_unix_s, duration_minutes, avg_power_watts,
        state=CREATED,
    ):  # fmt: skip
        if (
            not isinstance(contract_id, str)
            or len(contract_id) != 36
            or [contract_id[i] for i in (8, 13, 18, 23)] != ["-"] * 4
        ):
            raise ContractError("ContractId %r is not a UUID string" % (contract_id,))
        try:
            self._id_bytes = unhexlify(contract_id.replace("-", ""))
        except ValueError:
            raise ContractError("ContractId %r is not a UUID string" % (contract_id,)) from None
        slot_s, _gate, _maker, slot_start = parse_slot_name(market_slot_name)
        for name, value in (("StartUnixS", start_unix_s), ("AvgPowerWatts", avg_power_watts)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ContractError("%s must be a whole number, not %r" % (name, value))
        if isinstance(duration_minutes, bool) or not isinstance(duration_minutes, (int, float)):
            raise ContractError("DurationMinutes must be a number, not %r" % (duration_minutes,))
        duration_s = round(duration_minutes * 60)
        if abs(duration_s - duration_minutes * 60) > 1e-6:
            raise ContractError("DurationMinutes %r is not whole seconds" % (duration_minutes,))
        if start_unix_s != slot_start:
            raise ContractError(
                "StartUnixS %d is not the start of slot %s" % (start_unix_s, market_slot_name)
            )
        if not 0 < duration_s <= slot_s:
            raise ContractError("duration %d s must be within the %d s slot" % (duration_s, slot_s))
        if avg_power_watts == 0 or not -(2**31) <= avg_power_watts < 2**31:
            raise ContractError("AvgPowerWatts %r must be non-zero and fit i32" % avg_power_watts)
        if state not in RULES and state != CREATED:
            raise ContractError("unknown contract state %r" % (state,))
        self.contract_id = contract_id
        self.market_slot_name = market_slot_name
        self.start_unix_s = start_unix_s
        self.duration_s = duration_s
        self.avg_power_watts = avg_power_watts
        self.state = state

    @classmethod
    def create(cls, by, contract_id, market_slot_name, start_unix_s, duration_minutes, watts):
        """A new contract in state Created. Only the buyer side creates contracts."""
        if by != BUYER:
            raise ContractError("only the buyer may create a contract, not %r" % (by,))
        return cls(contract_id, market_slot_name, start_unix_s, duration_minutes, watts)

    @property
    def duration_minutes(self):
        return self.duration_s // 60 if self.duration_s % 60 == 0 else self.duration_s / 60

    @property
    def end_unix_s(self):
        return self.start_unix_s + self.duration_s

    @property
    def energy_wh(self):
        """The energy the contract promises: AvgPowerWatts over its duration."""
        return self.avg_power_watts * self.duration_s / 3600

    @property
    def live(self):
        return self.state in LIVE

    @property
    def state_name(self):
        return STATE_NAMES[self.state]

    def may_advance(self, state, by):
        rule = RULES.get(state)
        return rule is not None and by in rule[0] and self.state in rule[1]

    def advance(self, state, by):
        """Move to `state` on behalf of `by` (BUYER or DEVICE), or raise ContractError."""
        if not self.may_advance(state, by):
            target = STATE_NAMES[state] if 0 <= state < 10 else state
            raise ContractError(
                "contract %s: %s may not go %s -> %s"
                % (self.contract_id, by, self.state_name, target)
            )
        previous, self.state = self.state, state
        return previous

    def to_bytes(self):
        name = self.market_slot_name.encode()
        return struct.pack(
            ">BB16sQIiB", _BINARY_VERSION, self.state, self._id_bytes, self.start_unix_s,
            self.duration_s, self.avg_power_watts, len(name),
        ) + name  # fmt: skip

    @classmethod
    def from_bytes(cls, data):
        if len(data) < _BINARY_FIXED:
            raise ContractError("contract record is %d bytes, too short" % len(data))
        version, state, raw_id, start, duration_s, watts, size = struct.unpack_from(
            ">BB16sQIiB", data
        )
        if version != _BINARY_VERSION:
            raise ContractError("contract record version %d is not %d" % (version, _BINARY_VERSION))
        if len(data) != _BINARY_FIXED + size:
            raise ContractError("contract record length does not match its slot name")
        try:
            name = bytes(data[_BINARY_FIXED:]).decode()
        except UnicodeError:
            raise ContractError("contract slot name is not UTF-8") from None
        return cls(_uuid_str(raw_id), name, start, duration_s / 60, watts, state)

    def to_json_dict(self):
        return {
            "ContractId": self.contract_id,
            "MarketSlotName": self.market_slot_name,
            "StartUnixS": self.start_unix_s,
            "DurationMinutes": self.duration_minutes,
            "AvgPowerWatts": self.avg_power_watts,
            "Status": self.state_name,
        }

    @classmethod
    def from_json_dict(cls, data):
        try:
            status = data.get("Status", "Created")
            if status not in STATE_NAMES:
                raise ContractError("unknown contract Status %r" % (status,))
            return cls(
                data["ContractId"], data["MarketSlotName"], data["StartUnixS"],
                data["DurationMinutes"], data["AvgPowerWatts"], STATE_NAMES.index(status),
            )  # fmt: skip
        except (KeyError, AttributeError, TypeError) as exc:
            raise ContractError("not a MarketContract record: %r" % (exc,)) from None

    def __eq__(self, other):
        return isinstance(other, MarketContract) and self.to_bytes() == other.to_bytes()

    def __repr__(self):
        return "<MarketContract %s %s %s %+dW %ss>" % (
            self.contract_id, self.state_name, self.market_slot_name,
            self.avg_power_watts, self.duration_s,
        )  # fmt: skip
