"""/metrics on the hub's page: its run-time figures for Prometheus (its text format, or
OpenMetrics when the scraper asks for it: prometheus_client's choose_encoder).

One CollectorRegistry per hub (never prometheus_client's global one: tests and the demo
run several hubs in one process). Nothing is counted twice: at each scrape the collector
reads the figures their owners keep anyway (the market maker's slots and price, the
Exchange's sessions, Discovery's and the market server's frames, the MQTT bridge, the
settlement service), and the store's figures through the page's read-only Reader thread,
off the hub's loop. Refusals are counted by the component that refuses
(transport/counts.py), under reasons from a fixed set: no peer address, key id or
string a peer sent is ever a label value, so a scrape's size is fixed whatever peers do.

Cost of a scrape: no scan of the store (StoreCounts: final contracts are counted once,
then only the live and new ones; settlement items past the last counted), two stat()
calls, a few attribute reads, /proc/self for the process figures; README "Metrics" has
the figures on a store of 1,000,000 contracts. Nothing here is secret: counts, states
and sizes only.
"""

import logging
import os

from fastapi import Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from hub.integrations.settlement.records import FINAL_STATES
from hub.store.reputation import oldest_live
from protocol.contract import LIVE, STATE_NAMES

log = logging.getLogger(__name__)


def add_route(app, web):
    """GET /metrics on the page's app (its bind and guards apply, as to every route)."""
    collector, counts = HubCollector(web), StoreCounts()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    # gridbid_process_resident_memory_bytes, _cpu_seconds_total, _open_fds, ... (/proc)
    ProcessCollector(namespace="gridbid", registry=registry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request):
        encode, content_type = choose_encoder(request.headers.get("accept"))
        # The store's figures off the loop first; then the rest and the text in one turn
        # of the loop, so one scrape's figures belong together.
        settles = "settlement" in web.hub.integrations
        collector.stored = await web.reader(counts.read, settles)
        return Response(encode(registry), headers={"content-type": content_type,
                                                   "cache-control": "no-store"})  # fmt: skip

    return registry


class StoreCounts:
    """Contracts by state and contracts settled, read in the Reader's thread at each scrape
    at a cost that does not grow with the store. A contract in a final state never changes
    again (protocol/contract.py RULES) and no row of contracts or settlement_items is ever
    deleted, so the contracts below the oldest live one (by rowid) are counted once and
    kept; each scrape counts only the live ones (a few slots' worth, over the
    contracts_state index) and the final ones made since that oldest live one (a rowid
    range). The ledger expires overdue contracts, so no contract stays live for long.
    Settlement items are counted past the last rowid counted. The first scrape after a
    start counts everything once, over the index (README "Metrics" has the figures)."""

    LIVE_STATES = tuple(STATE_NAMES[i] for i in LIVE)
    IN_LIVE = "state IN (%s)" % ",".join("'%s'" % state for state in LIVE_STATES)

    def __init__(self):
        self.final = None  # {final state: contracts below self.below}, after the first read
        self.below = 0  # the rowid watermark: every contract below it is final
        self.settled, self.settled_to = 0, 0  # items counted, the last rowid counted

    def read(self, store, settles):
        """-> {"contracts": {state: n}, "settled": n (None: the hub does not settle)}"""
        conn = store.db.conn
        conn.execute("BEGIN")  # one snapshot of the store for the whole read
        try:
            live = dict(conn.execute("SELECT state, count(*) FROM contracts WHERE %s "
                                     "GROUP BY state" % self.IN_LIVE))  # fmt: skip
            oldest = oldest_live(conn)
            if self.final is None:  # the first read: every final one, over the index
                every = conn.execute("SELECT state, count(*) FROM contracts GROUP BY state")
                self.final = {state: n for state, n in every if state in FINAL_STATES}
                for state, n in self._finals(conn, oldest, None):
                    self.final[state] -= n  # kept below the watermark only
            elif oldest > self.below:  # the finals since the last read, below the oldest live
                for state, n in self._finals(conn, self.below, oldest):
                    self.final[state] = self.final.get(state, 0) + n
            self.below = max(self.below, oldest)
            since = dict(self._finals(conn, self.below, None))
            if settles:  # its tables exist once the settlement service has started
                self._settled(conn)
        finally:
            conn.execute("COMMIT")
        counts = {state: self.final.get(state, 0) + since.get(state, 0) + live.get(state, 0)
                  for state in STATE_NAMES}  # fmt: skip
        return {"contracts": counts, "settled": self.settled if settles else None}

    def _settled(self, conn):
        """Items are never deleted: the first read counts them all (over the smallest
        index), later ones those past the last rowid counted."""
        if self.settled_to == 0:
            n, last = conn.execute("SELECT count(*), max(rowid) FROM settlement_items").fetchone()
        else:
            n, last = conn.execute("SELECT count(*), max(rowid) FROM settlement_items "
                                   "WHERE rowid > ?", (self.settled_to,)).fetchone()  # fmt: skip
        self.settled, self.settled_to = self.settled + n, last or self.settled_to

    def _finals(self, conn, low, high):
        """[(final state, n)] of contracts with low <= rowid (< high): a rowid range (NOT
        INDEXED: the planner would scan the whole state index instead)."""
        sql = "SELECT state, count(*) FROM contracts NOT INDEXED WHERE rowid >= ? AND NOT %s"
        args = (low,) if high is None else (low, high)
        if high is not None:
            sql += " AND rowid < ?"
        return conn.execute(sql % self.IN_LIVE + " GROUP BY state", args).fetchall()


class HubCollector:
    """prometheus_client's custom collector protocol: collect() -> metric families."""

    def __init__(self, web):
        self.web, self.hub = web, web.hub
        self.stored = {"contracts": {}, "settled": None}  # set by the route before a scrape

    def collect(self):
        hub = self.hub
        yield from self._market(hub)
        yield from self._frames(hub)
        yield from self._links(hub)
        yield from self._store(hub)

    def _market(self, hub):
        maker = hub.market
        yield counter("slots", "Market slots the hub ran to their gate (cleared and "
                      "recorded), since it started", maker.slots_recorded)  # fmt: skip
        yield counter("slots_traded", "Of those slots, the ones that traded (a clearing "
                      "price and a volume), since the hub started", maker.slots_traded)  # fmt: skip
        if maker.last_price is not None:
            yield gauge("clearing_price_cents_per_kwh", "The last traded slot's uniform "
                        "clearing price, in cents (of the market's currency) per kWh",
                        maker.last_price)  # fmt: skip
        found = self.stored["contracts"]
        family = GaugeMetricFamily("gridbid_contracts", "Contracts in the store, by their "
                                   "current state", labels=["state"])  # fmt: skip
        for state in STATE_NAMES:
            family.add_metric([state], found.get(state, 0))
        yield family
        yield gauge("batteries", "Batteries the hub has heard from since it started "
                    "(Register or QueryResponse)", len(hub.registry.devices))  # fmt: skip

    def _frames(self, hub):
        discovery, server, exchange = hub.discovery, hub.market_server, hub.exchange
        yield counter("etp_frames_received", "ETP datagrams the hub received on the "
                      "group", discovery.frames_in)  # fmt: skip
        yield counter("etp_frames_sent", "ETP frames the hub sent to the group (its "
                      "Queries)", discovery.frames_out)  # fmt: skip
        yield by_reason("etp_frames_refused", "ETP datagrams the hub refused, by reason "
                        "(the decoder's check that failed, or impersonation: a frame "
                        "about another device)", discovery.refused)  # fmt: skip
        yield counter("market_frames_received", "Market API frames received on TCP "
                      "sessions", server.frames_in if server else 0)  # fmt: skip
        yield counter("market_frames_sent", "Market API frames sent on TCP sessions",
                      server.frames_out if server else 0)  # fmt: skip
        if server is not None:
            yield by_reason("market_connections_refused", "Market API connections the hub "
                            "refused and closed, by reason", server.refused)  # fmt: skip
        yield by_reason("market_messages_refused", "Authenticated market API messages "
                        "the exchange refused (an error answer), by message type",
                        exchange.refused, "type")  # fmt: skip

    def _links(self, hub):
        sessions = GaugeMetricFamily(
            "gridbid_market_sessions",
            "Aggregators in the market now, by how they are connected",
            labels=["transport"],
        )
        participants = list(hub.exchange.participants.values())
        hosted = sum(1 for p in participants if p.close is None)  # LocalLink: no socket
        sessions.add_metric(["hosted"], hosted)
        sessions.add_metric(["tcp"], len(participants) - hosted)
        yield sessions
        up = GaugeMetricFamily("gridbid_link_up", "1 when the link to this peer works "
                               "(mqtt: connected to the broker; settlement: the last round "
                               "reached the chain), 0 when not; only links hub.toml sets",
                               labels=["link"])  # fmt: skip
        bridge = hub.integrations.get("mqtt")
        settlement = hub.integrations.get("settlement")
        if bridge is not None:
            up.add_metric(["mqtt"], int(bridge.online))
        if settlement is not None:
            up.add_metric(["settlement"], int(settlement.reachable))
        yield up
        if bridge is not None:
            yield gauge("mqtt_outbox_events", "Events waiting in the MQTT outbox for the "
                        "broker's acknowledgement", bridge.outbox.count())  # fmt: skip
        if settlement is not None and self.stored["settled"] is not None:
            final = sum(n for state, n in self.stored["contracts"].items()
                        if state in FINAL_STATES)  # fmt: skip
            yield gauge(
                "settlement_backlog_contracts",
                "Contracts in a final state that no settlement batch holds yet",
                max(0, final - self.stored["settled"]),
            )
        yield gauge("web_clients", "Live WebSocket clients of the status page",
                    len(self.web.fanout.clients))  # fmt: skip

    def _store(self, hub):
        family = GaugeMetricFamily("gridbid_store_size_bytes", "Size of the hub's SQLite "
                                   "store on disk, by file (db, wal)", labels=["file"])  # fmt: skip
        path = hub.cfg["store"]
        for name, where in (("db", path), ("wal", "%s-wal" % path)):
            try:
                family.add_metric([name], os.stat(where).st_size)
            except OSError:  # no WAL file (checkpointed and closed): nothing to show
                pass
        yield family
        budget = hub.disk.status()["budget_mb"]  # hub.toml disk_budget_mb; 0: none
        if budget:
            yield gauge("store_budget_bytes", "The store's disk budget (hub.toml "
                        "disk_budget_mb); the hub warns at 80 %", budget * 1e6)  # fmt: skip


def counter(name, doc, value):
    return CounterMetricFamily("gridbid_" + name, doc, value=value)


def gauge(name, doc, value):
    return GaugeMetricFamily("gridbid_" + name, doc, value=value)


def by_reason(name, doc, counts, label="reason"):
    family = CounterMetricFamily("gridbid_" + name, doc, labels=[label])
    for reason, n in counts.by_reason.items():
        family.add_metric([reason], n)
    return family
