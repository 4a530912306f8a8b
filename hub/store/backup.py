"""The store's copies: `gridbid hub backup`, `restore` and `export --csv`.

- backup: SQLite's online backup, in one step, from a connection that only reads. In WAL
  mode a reader never blocks the hub's writes, and one step copies one consistent
  snapshot (stepping page by page would restart at each of the hub's commits). The copy
  goes to FILE.tmp, is checked (integrity_check, its schema version), synced, and only
  then takes FILE's name: an interrupted backup never looks like a backup.
- restore: the backup is checked first; the hub must be stopped (the store is opened
  with an exclusive lock, which any open connection refuses: a running hub holds one
  for its life). The current store is kept beside it (STORE.before-restore-<time>), and
  the backup is written into the store through SQLite, so a stale -wal file can never
  be replayed over it.
- export: contracts, trades and telemetry of a time range as CSV, one file each, read
  in a single snapshot.
"""

import csv
import os
import sqlite3
import time
from pathlib import Path

from hub.store.schema import CURRENT

# what export writes: file -> (query of [from, to), columns)
EXPORTS = {
    "contracts": (
        "SELECT id, device, buyer, slot, start, duration_s, avg_watts, price, state, "
        "delivered_kwh, confirm_id, created_at FROM contracts "
        "WHERE start >= :start AND start < :end ORDER BY start, id"
    ),
    "trades": (
        "SELECT id, clearing_id, slot, order_id, side, owner, kwh, price, at FROM trades "
        "WHERE at >= :start AND at < :end ORDER BY at, id"
    ),
    "telemetry": (
        "SELECT id, device, at, soc, remaining_kwh, voltage, power_kw, health FROM telemetry "
        "WHERE at >= :start AND at < :end ORDER BY at, id"
    ),
}


class BackupError(RuntimeError):
    """One line: what is wrong with a store, a backup or a restore."""


def backup(store, out):
    """Copy the store at path `store` (the hub may be running) to `out`. -> its summary."""
    if not Path(store).is_file():
        raise BackupError("no store at %s" % store)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(str(store), timeout=30)
    try:
        source.execute("PRAGMA query_only = ON")
        target = sqlite3.connect(str(tmp))
        try:
            source.backup(target)  # one step: one snapshot
        finally:
            target.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError("cannot back up %s: %s" % (store, exc)) from None
    finally:
        source.close()
    try:
        summary = check(tmp)
    except BackupError:
        tmp.unlink(missing_ok=True)
        raise
    _sync(tmp)
    os.replace(tmp, out)
    _sync(out.parent)
    return summary


def restore(backup_file, store):
    """Put backup_file in the store's place (the hub stopped). -> (summary, kept path)."""
    summary = check(backup_file)
    source = sqlite3.connect("file:%s?mode=ro" % Path(backup_file).resolve(), uri=True)
    target = sqlite3.connect(str(store), timeout=0.5)
    kept = None
    try:
        target.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            target.execute("BEGIN EXCLUSIVE")
            target.execute("ROLLBACK")  # the lock stays with the connection
        except sqlite3.OperationalError:
            raise BackupError("%s is in use: stop the hub (and anything reading its store) "
                              "before a restore" % store) from None  # fmt: skip
        if target.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            kept = Path("%s.before-restore-%s" % (store, time.strftime("%Y%m%dT%H%M%S")))
            copy = sqlite3.connect(str(kept))
            try:
                target.backup(copy)
            finally:
                copy.close()
        source.backup(target)
    except sqlite3.Error as exc:
        raise BackupError("cannot restore %s into %s: %s" % (backup_file, store, exc)) from None
    finally:
        source.close()
        target.close()
    return summary, kept


def check(path):
    """A store file checked whole -> {"version", "contracts", "trades", "telemetry",
    "bytes"}; BackupError if it is not a sound gridbid store this hub can open."""
    if not Path(path).is_file():
        raise BackupError("no file %s" % path)
    try:
        db = sqlite3.connect("file:%s?mode=ro" % Path(path).resolve(), uri=True)
    except sqlite3.Error as exc:
        raise BackupError("%s: %s" % (path, exc)) from None
    try:
        found = db.execute("PRAGMA integrity_check").fetchall()
        if found != [("ok",)]:
            raise BackupError("%s is damaged: %s" % (path, found[0][0]))
        version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if not version or version > CURRENT:
            raise BackupError("%s has schema version %s; this hub reads 1..%d"
                              % (path, version, CURRENT))  # fmt: skip
        counts = {t: db.execute("SELECT count(*) FROM %s" % t).fetchone()[0] for t in EXPORTS}
    except sqlite3.DatabaseError as exc:
        raise BackupError("%s is not a gridbid store: %s" % (path, exc)) from None
    finally:
        db.close()
    return {"version": version, **counts, "bytes": Path(path).stat().st_size}


def export(store, folder, start, end, tables=tuple(EXPORTS)):
    """tables' rows of [start, end) (unix s) as folder/<table>.csv. -> {table: rows}."""
    unknown = set(tables) - set(EXPORTS)
    if unknown:
        raise BackupError("no such export %s: %s" % (sorted(unknown), ", ".join(EXPORTS)))
    if not Path(store).is_file():
        raise BackupError("no store at %s" % store)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(store), timeout=30)
    written = {}
    try:
        db.execute("PRAGMA query_only = ON")
        db.execute("BEGIN")  # one snapshot for every file
        for table in tables:
            cursor = db.execute(EXPORTS[table], {"start": start, "end": end})
            path = folder / ("%s.csv" % table)
            with open(path, "w", newline="") as f:
                out = csv.writer(f)
                out.writerow([c[0] for c in cursor.description])
                count = 0
                for row in cursor:
                    out.writerow(row)
                    count += 1
            written[table] = count
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise BackupError("cannot export from %s: %s" % (store, exc)) from None
    finally:
        db.close()
    return written


def _sync(path):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
