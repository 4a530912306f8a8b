"""What the status page reads of the platform layer (issue 8): stable credit, certificates
(RECs), NRG governance and incentive rewards, straight from the platform's tables in the
hub's store (schema.py) over the page's read-only connection (hub/store/views.py's
Reader). Nothing here imports the rest of the platform or touches the chain: the store is
the platform's truth, and the page only reads it.

A store where no [platform] section ever ran has none of these tables: every view then
answers {"enabled": false} (and empty pages), never a 404 or a 500. A store at an
older platform schema (say version 1: no governance yet) shows what it has.

Units as stored: credit in base units of settlement's mint (its `decimals`), fiat in
minor units of the rate's currency, NRG whole tokens (decimals 0), unix seconds.
Accounts are public keys (base58); no wallet file is ever read.
"""

import json

from hub.store.views import shown

CERTIFICATE_STATUSES = ("held", "listed", "retired")
PROPOSAL_STATUSES = ("open", "passed", "rejected", "executed")
REWARD_RULES = ("conservation", "demand_response", "liquidity")


def tables(store):
    return {r["name"] for r in store.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}


def enabled(store):
    """The platform's schema version in this store, 0 when it never ran."""
    if "platform_schema_version" not in tables(store):
        return 0
    return store.rows("SELECT coalesce(max(version), 0) AS v FROM platform_schema_version")[0]["v"]


def _one(store, sql, params=()):
    return store.rows(sql, params)[0]


def summary(store):
    """The platform at a glance (GET /api/platform)."""
    have = tables(store)
    if "platform_schema_version" not in have:
        return {"enabled": False}
    out = {"enabled": True, "schema_version": enabled(store)}
    if "credit_rates" in have:
        rate = store.rows(
            "SELECT fiat_per_credit, currency, at FROM credit_rates ORDER BY id DESC LIMIT 1"
        )
        moves = _one(store, "SELECT coalesce(sum(units), 0) AS supply, "
                     "count(DISTINCT account) AS accounts FROM credit_moves")  # fmt: skip
        out["credit"] = {"rate": rate[0] if rate else None, "supply_units": moves["supply"],
                         "accounts": moves["accounts"]}  # fmt: skip
    if "rec_certificates" in have:
        counts = store.rows(
            "SELECT s.status, c.vintage, count(*) AS n FROM rec_certificates c "
            "JOIN rec_state s USING (serial) GROUP BY s.status, c.vintage ORDER BY c.vintage"
        )
        by_status = dict.fromkeys(CERTIFICATE_STATUSES, 0)
        by_vintage = {}
        for row in counts:
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
            vintage = by_vintage.setdefault(str(row["vintage"]),
                                            dict.fromkeys(CERTIFICATE_STATUSES, 0))  # fmt: skip
            vintage[row["status"]] = row["n"]
        energy = _one(store, "SELECT coalesce(sum(kwh), 0) AS kwh FROM rec_energy")["kwh"]
        out["certificates"] = {"total": sum(by_status.values()), "by_status": by_status,
                               "by_vintage": by_vintage, "counted_kwh": energy}  # fmt: skip
    if "gov_proposals" in have:
        token = store.rows("SELECT mint, supply FROM gov_token")
        staked = _one(store, "SELECT coalesce(sum(amount), 0) AS n, count(*) AS stakes "
                      "FROM gov_stakes WHERE released_by IS NULL")  # fmt: skip
        by_status = dict.fromkeys(PROPOSAL_STATUSES, 0)
        for row in store.rows("SELECT status, count(*) AS n FROM gov_proposals GROUP BY status"):
            by_status[row["status"]] = row["n"]
        out["nrg"] = {"mint": token[0]["mint"] if token else None,
                      "supply": token[0]["supply"] if token else None,
                      "staked": staked["n"], "stakes": staked["stakes"]}  # fmt: skip
        out["proposals"] = {"open": by_status["open"], "total": sum(by_status.values()),
                            "by_status": by_status}  # fmt: skip
    if "incentive_rewards" in have:
        last = store.rows(
            "SELECT epoch, count(*) AS rewards, count(DISTINCT account) AS accounts, "
            "sum(amount) AS nrg, count(paid_by) AS paid FROM incentive_rewards "
            "WHERE epoch = (SELECT max(epoch) FROM incentive_rewards) GROUP BY epoch"
        )
        epochs = _one(store, "SELECT count(DISTINCT epoch) AS n FROM incentive_rewards")["n"]
        out["rewards"] = {"last_epoch": last[0] if last else None, "epochs": epochs}
    out["pending_commands"] = _one(
        store, "SELECT count(*) AS n FROM platform_commands WHERE status = 'pending'"
    )["n"]
    return out


def certificates(store, status=None, vintage=None, limit=100, offset=0):
    """-> (enabled, total, rows): certificates by serial, newest first."""
    if "rec_certificates" not in tables(store):
        return False, 0, []
    where, params = [], []
    for column, value in (("s.status", status), ("c.vintage", vintage)):
        if value is not None:
            where, params = where + ["%s = ?" % column], params + [value]
    where = " WHERE " + " AND ".join(where) if where else ""
    base = " FROM rec_certificates c JOIN rec_state s USING (serial)" + where
    total = _one(store, "SELECT count(*) AS n" + base, params)["n"]
    rows = store.rows(
        "SELECT c.serial, c.vintage, c.device, c.source, c.minted_at, s.owner, s.status, "
        "s.price" + base + " ORDER BY c.serial DESC LIMIT ? OFFSET ?",
        params + [limit, offset],
    )
    return True, total, [shown(r) for r in rows]


def proposals(store, status=None, limit=100, offset=0):
    """-> (enabled, total, rows): proposals, newest first, each with its vote tally
    counted from gov_votes (live while open; the decided yes/no once decided)."""
    if "gov_proposals" not in tables(store):
        return False, 0, []
    where, params = ("WHERE p.status = ?", [status]) if status else ("", [])
    total = _one(store, "SELECT count(*) AS n FROM gov_proposals p " + where, params)["n"]
    rows = store.rows(
        "SELECT p.*, coalesce(sum(CASE WHEN v.yes THEN v.weight END), 0) AS tally_yes, "
        "coalesce(sum(CASE WHEN v.yes THEN 0 ELSE v.weight END), 0) AS tally_no, "
        "count(v.account) AS votes "
        "FROM gov_proposals p LEFT JOIN gov_votes v ON v.proposal = p.id "
        + where
        + " GROUP BY p.id ORDER BY p.created_at DESC, p.id LIMIT ? OFFSET ?",
        params + [limit, offset],
    )
    out = []
    for row in rows:
        row = shown(row)
        try:
            row["value"] = json.loads(row["value"])
        except (TypeError, ValueError):
            pass  # shown as stored
        row["title"] = "%s = %s" % (row["param"], json.dumps(row["value"]))
        row["tally"] = {"yes": row.pop("tally_yes"), "no": row.pop("tally_no"),
                        "votes": row.pop("votes")}  # fmt: skip
        out.append(row)
    return True, total, out


def rewards(store, epoch=None, limit=100, offset=0):
    """-> (enabled, total epochs, epochs, rows): per epoch (newest first) the NRG each rule
    gave and how much is paid; with `epoch`, that epoch's rows per account and rule."""
    if "incentive_rewards" not in tables(store):
        return False, 0, [], []
    where, params = ("WHERE epoch = ?", [epoch]) if epoch is not None else ("", [])
    total = _one(store, "SELECT count(DISTINCT epoch) AS n FROM incentive_rewards " + where,
                 params)["n"]  # fmt: skip
    epochs = store.rows(
        "SELECT epoch, count(*) AS rewards, count(DISTINCT account) AS accounts, "
        "sum(amount) AS nrg, count(paid_by) AS paid, "
        "coalesce(sum(CASE WHEN paid_by IS NOT NULL THEN amount END), 0) AS paid_nrg "
        "FROM incentive_rewards " + where + " GROUP BY epoch ORDER BY epoch DESC LIMIT ? OFFSET ?",
        params + [limit, offset],
    )
    if epochs:
        marks = ",".join("?" * len(epochs))
        per_rule = store.rows(
            "SELECT epoch, rule, sum(amount) AS nrg FROM incentive_rewards WHERE epoch IN (%s) "
            "GROUP BY epoch, rule" % marks,
            [e["epoch"] for e in epochs],
        )
        for e in epochs:
            e["by_rule"] = {r["rule"]: r["nrg"] for r in per_rule if r["epoch"] == e["epoch"]}
    rows = []
    if epoch is not None:
        rows = [shown(r) for r in store.rows(
            "SELECT epoch, account, rule, basis_kwh, amount, paid_by FROM incentive_rewards "
            "WHERE epoch = ? ORDER BY account, rule", [epoch])]  # fmt: skip
    return True, total, epochs, rows
