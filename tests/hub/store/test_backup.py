"""`gridbid hub backup|restore|export` (hub/store/backup.py) on real SQLite files: a
backup taken while another process commits clearings, a restore, the refusal to restore
under a running `gridbid hub run`, and CSV by time range."""

import csv

import pytest
from helpers.hub_site import toml, write_keys
from helpers.processes import Gridbid
from test_store_hub import START, check_clearings, make_contract, record_clearing, start_writer

from gridbid.cli import main
from hub.store import Store, backup

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def site(tmp_path):
    write_keys(tmp_path / "hub-keys.json", [1])
    (tmp_path / "hub.toml").write_text(toml({
        "hub": {"store": "hub.sqlite", "slot_s": 10, "gate_s": 4, "interface": "127.0.0.1"},
        "aggregator": [{"key_id": 1}],
    }))  # fmt: skip
    return tmp_path


def hub(site, *args):
    return main(["hub", *args, "--config", str(site / "hub.toml")])


def test_a_backup_taken_while_clearings_commit_is_one_whole_snapshot(site, capsys):
    store = site / "hub.sqlite"
    Store(store).close()
    writer = start_writer(store, "forever")
    try:
        for _ in range(3):  # a clearing is committed every few ms meanwhile
            assert writer.stdout.readline()
            assert hub(site, "backup", "--out", str(site / "copy.sqlite")) == 0
            got = backup.check(site / "copy.sqlite")
            assert got["trades"] % 5 == 0, got  # each clearing whole or absent
            with Store(site / "copy.sqlite") as copy:
                check_clearings(copy, range(got["trades"] // 5))
    finally:
        writer.kill()
        writer.wait()
    assert "backed up" in capsys.readouterr().out
    assert not (site / "copy.sqlite.tmp").exists()


def test_restore_puts_the_backup_back_and_keeps_what_was_there(site, capsys):
    store = site / "hub.sqlite"
    with Store(store) as s:
        s.add_device(7, 70, "127.0.0.27:5000", at=1000.0)
        record_clearing(s, 0)
        s.record_contract(make_contract(), 7, 3, 18.0)
    assert hub(site, "backup", "--out", str(site / "monday.sqlite")) == 0
    with Store(store) as s:
        record_clearing(s, 1)  # after the backup
    assert hub(site, "restore", "--from", str(site / "monday.sqlite")) == 0
    said = capsys.readouterr().out
    assert "restored" in said and "1 contracts, 5 trades" in said, said
    with Store(store) as s:
        check_clearings(s, [0])
        assert len(s.contracts()) == 1
    kept = next(site.glob("hub.sqlite.before-restore-*"))
    with Store(kept) as s:
        check_clearings(s, [0, 1])  # nothing lost: the store as it was


def test_restore_is_refused_while_the_hub_runs(site, capsys):
    assert hub(site, "backup", "--out", str(site / "x.sqlite")) == 1  # no store yet
    assert "no store at" in capsys.readouterr().err
    running = Gridbid("hub", "run", "--config", site / "hub.toml", cwd=site)
    try:
        running.wait_for("slot", 30)
        assert hub(site, "backup", "--out", str(site / "x.sqlite")) == 0  # while it runs
        assert hub(site, "restore", "--from", str(site / "x.sqlite")) == 1
        err = capsys.readouterr().err
        assert "in use: stop the hub" in err and err.count("\n") == 1, err
    finally:
        running.interrupt()
    assert not list(site.glob("hub.sqlite.before-restore-*"))


@pytest.mark.parametrize(
    "content, why",
    [(b"not a database at all" * 100, "not a gridbid store"), (None, "no file")],
)
def test_a_bad_backup_is_refused_and_the_store_untouched(site, capsys, content, why):
    with Store(site / "hub.sqlite") as s:
        record_clearing(s, 0)
    bad = site / "bad.sqlite"
    if content is not None:
        bad.write_bytes(content)
    assert hub(site, "restore", "--from", str(bad)) == 1
    assert why in capsys.readouterr().err
    with Store(site / "hub.sqlite") as s:
        check_clearings(s, [0])


def test_a_backup_from_a_newer_hub_is_refused(site, capsys):
    with Store(site / "newer.sqlite") as s:
        s.db.execute("INSERT INTO schema_version (version, description, applied_at) "
                     "VALUES (99, 'the future', 0)")  # fmt: skip
        s.db.conn.commit()
    assert hub(site, "restore", "--from", str(site / "newer.sqlite")) == 1
    assert "schema version 99" in capsys.readouterr().err


def test_export_writes_the_rows_of_the_range_as_csv(site, capsys):
    with Store(site / "hub.sqlite") as s:
        s.add_device(7, 70, "127.0.0.27:5000", at=1000.0)
        for i in range(10):
            s.record_telemetry(7, soc=50 + i, power_kw=1.0, at=START + 60 * i)
        s.record_contract(make_contract(), 7, 3, 18.0)  # starts at START
        record_clearing(s, 0)
    day = "2025-11-21T04:48:00"  # START + 180 s, ISO 8601 UTC
    assert hub(site, "export", "--csv", str(site / "out"), "--from", day,
               "--to", str(START + 420)) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "telemetry.csv: 4 rows" in said, said  # 180, 240, 300, 360
    rows = list(csv.DictReader(open(site / "out" / "telemetry.csv")))
    assert [float(r["at"]) - START for r in rows] == [180, 240, 300, 360]
    assert [float(r["soc"]) for r in rows] == [53, 54, 55, 56]
    assert "contracts.csv: 0 rows" in said  # it starts before the range
    assert hub(site, "export", "--csv", str(site / "all"), "--what", "contracts,trades") == 0
    said = capsys.readouterr().out
    assert "contracts.csv: 1 rows" in said and "trades.csv: 5 rows" in said, said
    contract = next(csv.DictReader(open(site / "all" / "contracts.csv")))
    assert contract["device"] == "7" and float(contract["price"]) == 18.0
    assert not (site / "all" / "telemetry.csv").exists()
    assert hub(site, "export", "--csv", str(site / "x"), "--what", "keys") == 1
    assert "no such export ['keys']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hub(site, "export", "--csv", str(site / "x"), "--from", "yesterday-ish")
    assert "invalid time value" in capsys.readouterr().err
