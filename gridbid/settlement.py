"""`gridbid settlement status --config hub.toml`: the settlement journal at a glance
(batches by status, contracts settled, transactions, the latest batches). It only
reads the hub's store, changing nothing, so it can run beside a running hub."""

import sys
import time
import types

from hub.config import hub_toml


def add_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="batches, contracts settled, transactions",
                                description=__doc__)  # fmt: skip
    status.add_argument("--config", required=True, help="hub.toml ([hub] store)")
    status.add_argument("--limit", type=int, default=20, help="latest batches shown (20)")


def run(args):
    from sqlite_utils import Database

    from gridbid import readonly
    from hub.integrations.settlement import journal, records, schema

    try:
        cfg = hub_toml.load(args.config, keys=False)
        settlement = ("settlement_schema_version", schema.CURRENT, "settlement",
                      "the hub with [settlement]")  # fmt: skip
        conn = readonly.connect(cfg["store"], tables=[settlement])
    except (hub_toml.ConfigError, readonly.ReadError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    store = types.SimpleNamespace(db=Database(conn, execute_plugins=False))
    counts = journal.counts(store)
    counts["waiting"] = journal.waiting(store, records.FINAL_STATES)
    print("batches %s; contracts settled %d (amount %d base units); waiting %d; "
          "transactions %s" % (counts["batches"], counts["contracts"], counts["amount"],
                               counts["waiting"], counts["transactions"]))  # fmt: skip
    for row in journal.batches(store, limit=args.limit):
        print("%-32s %-9s parts %-3s amount %-12s %s %s" % (
            row["id"], row["status"], row["parts"], row["amount"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["updated_at"] or row["at"])),
            row["tx_signature"] or "", ))  # fmt: skip
        if row["error"]:
            print("    %s" % row["error"])
    conn.close()
    return 0
