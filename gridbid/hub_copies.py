"""`gridbid hub backup|restore|export`: copies of the hub's store (hub/store/backup.py).

gridbid hub backup --config hub.toml --out FILE       safe while the hub runs
gridbid hub restore --config hub.toml --from FILE     the hub stopped; the current
                                                      store is kept beside it
gridbid hub export --config hub.toml --csv DIR [--from T] [--to T] [--what contracts,...]
    contracts (by start), trades and telemetry (by time) of [from, to) as CSV;
    T is unix seconds or an ISO 8601 date or time (UTC unless it says otherwise)
"""

import datetime
import sys

ACTIONS = ("backup", "restore", "export")


def add_arguments(actions):
    backup = actions.add_parser("backup", help="copy the store (safe while the hub runs)")
    backup.add_argument("--config", required=True, help="hub.toml")
    backup.add_argument("--out", required=True, help="the backup file to write")
    restore = actions.add_parser("restore", help="put a backup in the store's place")
    restore.add_argument("--config", required=True, help="hub.toml")
    restore.add_argument("--from", dest="source", required=True, help="the backup file")
    export = actions.add_parser("export", help="contracts, trades and telemetry as CSV")
    export.add_argument("--config", required=True, help="hub.toml")
    export.add_argument("--csv", required=True, metavar="DIR", help="folder for the files")
    export.add_argument(
        "--from",
        dest="start",
        type=moment,
        default=0.0,
        metavar="T",
        help="from this time (unix s or ISO 8601; default: the beginning)",
    )
    export.add_argument(
        "--to",
        dest="end",
        type=moment,
        default=float("inf"),
        metavar="T",
        help="until this time, excluded (default: now and on)",
    )
    export.add_argument(
        "--what",
        default="contracts,trades,telemetry",
        help="which files (default: contracts,trades,telemetry)",
    )


def moment(text):
    """unix seconds or an ISO 8601 date/time (UTC unless it names a zone) -> unix s."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not a time: %r (unix seconds or ISO 8601)" % text) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


moment.__name__ = "time"  # argparse: "invalid time value: ..."


def run(args, cfg):
    from hub.store import backup

    try:
        return _run(args, cfg["store"], backup)
    except backup.BackupError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1


def _run(args, store, backup):
    if args.action == "backup":
        got = backup.backup(store, args.out)
        print("backed up %s to %s: %s" % (store, args.out, _summary(got)))
    elif args.action == "restore":
        got, kept = backup.restore(args.source, store)
        if kept is not None:
            print("kept the store as it was in %s" % kept)
        print("restored %s from %s: %s" % (store, args.source, _summary(got)))
    else:
        written = backup.export(store, args.csv, args.start, args.end,
                                [w.strip() for w in args.what.split(",") if w.strip()])  # fmt: skip
        for table, rows in written.items():
            print("%s/%s.csv: %d rows" % (args.csv, table, rows))
    return 0


def _summary(got):
    return (
        "schema %(version)d, %(contracts)d contracts, %(trades)d trades, %(telemetry)d "
        "readings, %(bytes)d bytes" % got
    )
