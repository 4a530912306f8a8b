"""The hub's store as the read commands see it (`settlement status`, `credit balances`,
`rec show`, `gov proposals` ...): they create no file, no folder, no table and no key.
A store that is missing, or whose tables this gridbid does not read, is one line
(ReadError), and the command exits 2."""

import sqlite3
from pathlib import Path

from hub.store import schema


class ReadError(Exception):
    pass


def connect(path, tables=()):
    """A connection to the store at `path` that cannot change it, once its schemas are
    the ones this gridbid reads: the hub's, and each of `tables` ((version table,
    number of migrations, what they hold, what makes them)). -> sqlite3.Connection"""
    path = Path(path)
    if not path.is_file():
        raise ReadError("no store at %s (the hub makes it when it starts)" % path)
    # mode=rw, not ro: the file is never created, and the last connection to close
    # removes the -wal and -shm files, which a read-only one would leave behind.
    # query_only refuses every write.
    conn, problem = None, None
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, timeout=5)
        conn.execute("PRAGMA query_only = ON")
        for table in (("schema_version", len(schema.MIGRATIONS), "hub", "the hub"), *tables):
            problem = problem or _problem(conn, path, *table)
    except sqlite3.Error as exc:
        problem = "cannot read the store %s: %s" % (path, exc)
    if problem:
        if conn is not None:
            conn.close()
        raise ReadError(problem)
    return conn


def _problem(conn, path, table, current, what, maker):
    found = schema.table_version(conn, table)
    if found == current:
        return None
    if found == 0:
        return "the store %s has no %s tables yet (%s makes them)" % (path, what, maker)
    return "the store %s has %s tables of version %d, this gridbid reads version %d: %s" % (
        path, what, found, current,
        "upgrade gridbid" if found > current else maker + " upgrades them",
    )  # fmt: skip
