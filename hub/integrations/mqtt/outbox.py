"""What the MQTT bridge (hub/integrations/mqtt/bridge.py) sends: each event's topic (route),
and the outbox that holds every message until the broker has it (Home Assistant's
entities: home_assistant.py).

The outbox: every hub event, as the message it becomes, written to its own SQLite
file before anything else happens to it, and deleted only once the broker has
acknowledged it (PUBACK). While the broker is unreachable the outbox grows; on
reconnect it is sent in order (seq, which AUTOINCREMENT never reuses, so
the order holds across restarts). A hub that crashes loses nothing: the next bridge
sends what the last one had not seen acknowledged (a consumer drops the duplicates
by the event id every payload carries).

A message the broker refuses for good (PUBACK reason >= 0x80, e.g. 0x87 Not
authorized: the ACL forbids the topic) moves to `refused`, with the reason, instead
of being sent again and again: kept for the operator, never silently lost.

Only the hub's event-loop thread uses an Outbox (the bridge hands paho's callbacks
over to it), so it needs no lock. WAL with synchronous=NORMAL: a commit survives the
process dying at any point, and costs no fsync (measured in the bridge's report: an
add is tens of microseconds, so the hub's event loop barely notices it); a power cut
may lose the last moments' commits, which the hub's own store (synchronous=FULL)
still holds.
"""

import contextlib
import re
import sqlite3
import time

RETAINED = {"device", "failure", "telemetry", "price", "clearing", "control", "disk"}


def route(base, event):
    """-> (topic, retained) of an event (the table in hub/integrations/mqtt/bridge.py's doc)."""
    kind = event["kind"]
    if kind in ("device", "failure"):
        topic = "device/%s/status" % level(event["device"])
    elif kind == "telemetry":
        topic = "device/%s/telemetry" % level(event["device"])
    elif kind in ("offer", "bid", "clearing"):
        topic = "market/" + kind
    elif kind == "control":
        topic = "control/" + level(event["name"])
    else:  # price, contract, settlement, disk
        topic = kind
    return "%s/%s" % (base, topic), kind in RETAINED


def level(text):
    """text as one topic level: no separators or wildcards."""
    return re.sub(r"[/+#\x00]", "_", str(text))


SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    retain INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    retain INTEGER NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL,
    refused_at REAL NOT NULL
);
"""


class Outbox:
    def __init__(self, path):
        self.path = str(path)
        # isolation_level=None: autocommit, each statement its own transaction unless
        # BEGIN is said (done() and refuse() group theirs).
        self.db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.executescript(SCHEMA)
        except BaseException:
            self.db.close()
            raise

    def close(self):
        self.db.close()

    def add(self, event_id, topic, payload, retain):
        """Write one message (committed on return). -> its seq."""
        cur = self.db.execute(
            "INSERT INTO outbox (event_id, topic, payload, retain, at) VALUES (?, ?, ?, ?, ?)",
            (event_id, topic, payload, int(retain), time.time()),
        )
        return cur.lastrowid

    def after(self, seq, limit):
        """The next `limit` messages after seq, in order: [(seq, topic, payload, retain)]."""
        return self.db.execute(
            "SELECT seq, topic, payload, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()

    def done(self, seqs):
        """The broker acknowledged these: forget them (one transaction)."""
        with self._transaction():
            self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def refuse(self, seq, reason):
        """The broker refused this one for good: move it to `refused`, with the reason.
        -> its topic."""
        with self._transaction():
            row = self.db.execute("SELECT topic FROM outbox WHERE seq = ?", (seq,)).fetchone()
            self.db.execute(
                "INSERT OR REPLACE INTO refused (seq, event_id, topic, payload, retain, at, "
                "reason, refused_at) SELECT seq, event_id, topic, payload, retain, at, ?, ? "
                "FROM outbox WHERE seq = ?",
                (reason, time.time(), seq),
            )
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        return row[0] if row else None

    def count(self):
        return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def pending(self):
        """Every message not yet acknowledged, in order: [(seq, event_id, topic, payload)]."""
        return self.db.execute(
            "SELECT seq, event_id, topic, payload FROM outbox ORDER BY seq"
        ).fetchall()

    def refused(self):
        """[(seq, event_id, topic, reason)] in order."""
        return self.db.execute(
            "SELECT seq, event_id, topic, reason FROM refused ORDER BY seq"
        ).fetchall()

    @contextlib.contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
