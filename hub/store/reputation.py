"""The reputations the market reads at each slot (hub/market/exchange.py open_slot), at a
cost that does not grow with the store.

They are hub/store/views.py's aggregator_reputation and battery_reputation, which scan
every contract ever made: ~0.27 s of the hub's loop at 200,000 contracts, seconds after
a month. But a contract in a final state never changes again (protocol/contract.py
RULES: its state, its delivered_kwh and its contract_states rows are final with it), and
no contract is deleted. So the contracts below the oldest live one (by rowid) are
tallied once and kept, and each slot tallies only the rest: the live ones and those
made since (a few slots' worth; the ledger expires overdue contracts, so no contract
stays live for long). The first read after a start tallies everything once.
hub/integrations/web/metrics.py StoreCounts counts contracts by state the same way.
"""

from aggregator.strategies import PRIOR_KWH
from hub.store.views import PRIOR_CONTRACTS
from protocol.contract import LIVE, STATE_NAMES

LIVE_STATES = tuple(STATE_NAMES[i] for i in LIVE)
KWH = "abs(avg_watts) * duration_s / 3600000.0"
# As the view device_reputation (hub/store/schema.py V2) counts.
BUYERS = (
    "SELECT c.buyer, sum(EXISTS (SELECT 1 FROM contract_states s WHERE s.contract = c.id "
    "AND s.to_state = 'Confirmed')), sum(c.state = 'TerminatedByAtn') "
    "FROM contracts c NOT INDEXED WHERE c.rowid >= ? AND c.rowid < ? GROUP BY c.buyer"
)
DEVICES = (
    "SELECT device, sum(%s), sum(coalesce(delivered_kwh, CASE state WHEN "
    "'CompletedSuccess' THEN %s ELSE 0 END)) FROM contracts NOT INDEXED "
    "WHERE rowid >= ? AND rowid < ? AND state IN ('TerminatedByScada', "
    "'CompletedUnknownOutcome', 'CompletedSuccess', 'CompletedFailureByScada') "
    "GROUP BY device" % (KWH, KWH)
)


class Reputations:
    def __init__(self):
        self.below = 0  # every contract below this rowid is final, and in the tallies
        self.buyers = {}  # buyer key id -> [confirmed, withdrawn], below the watermark
        self.devices = {}  # device -> [promised kWh, delivered kWh], below the watermark

    def read(self, store):
        """-> ({aggregator key id: {"key_id", "confirmed", "withdrawn", "reputation"}},
        {device: reputation}): what views.aggregator_reputation and
        views.battery_reputation return, as of now."""
        conn = store.db.conn
        oldest = oldest_live(conn)
        if oldest > self.below:  # these turned final since the last read: kept for good
            _add(conn, self.below, oldest, self.buyers, self.devices)
            self.below = oldest
        buyers = {k: list(v) for k, v in self.buyers.items()}
        devices = {k: list(v) for k, v in self.devices.items()}
        _add(conn, self.below, 1 << 62, buyers, devices)  # the live ones, and the newest
        aggregators = {
            key_id: {"key_id": key_id, "confirmed": confirmed, "withdrawn": withdrawn,
                     "reputation": (confirmed + PRIOR_CONTRACTS)
                     / (confirmed + withdrawn + PRIOR_CONTRACTS)}
            for key_id, (confirmed, withdrawn) in buyers.items()
        }  # fmt: skip
        batteries = {device: (delivered + PRIOR_KWH) / (promised + PRIOR_KWH)
                     for device, (promised, delivered) in devices.items()}  # fmt: skip
        return aggregators, batteries


def _add(conn, low, high, buyers, devices):
    for buyer, confirmed, withdrawn in conn.execute(BUYERS, (low, high)):
        tally = buyers.setdefault(buyer, [0, 0])
        tally[0] += confirmed
        tally[1] += withdrawn
    for device, promised, delivered in conn.execute(DEVICES, (low, high)):
        tally = devices.setdefault(device, [0.0, 0.0])
        tally[0] += promised
        tally[1] += delivered


def oldest_live(conn):
    """The rowid of the oldest live contract (one index seek per live state), or the next
    rowid when none is live."""
    rows = conn.execute(" UNION ALL ".join(
        "SELECT min(rowid) FROM contracts WHERE state = '%s'" % state
        for state in LIVE_STATES)).fetchall()  # fmt: skip
    found = [r for (r,) in rows if r is not None]
    if found:
        return min(found)
    return conn.execute("SELECT coalesce(max(rowid), 0) + 1 FROM contracts").fetchone()[0]
