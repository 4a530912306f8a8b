"""Telemetry's roll-up (hub/store/telemetry.py) on a real SQLite store: what an hour, a
minute or a range says (counts, sums, extremes, energy) is the same before and after
raw readings become minute rows and minute rows become hour rows."""

import math
import random
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.store import Store, schema, telemetry

T0 = 1_764_000_000 // 3600 * 3600  # on the hour


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "hub.sqlite") as s:
        for device in (7, 8):
            s.add_device(device, device, "127.0.0.1:1", at=T0)
        yield s


def fill(store, seconds, rng):
    """1 Hz readings for device 7 (some fields unknown, one 20-minute gap) and every 10 s
    for device 8, over `seconds` from T0."""
    for t in range(seconds):
        if t % 10 == 0:
            store.record_telemetry(8, soc=50.0, power_kw=-1.0, at=T0 + t)
        if 4000 <= t < 5200:
            continue  # device 7 goes quiet: longer than MAX_HOLD_S
        store.record_telemetry(
            7, soc=rng.uniform(20, 90), remaining_kwh=None if t % 7 == 0 else rng.uniform(0, 10),
            voltage=rng.uniform(48, 54), power_kw=rng.uniform(-3, 3), health=rng.choice([0, 0, 1]),
            at=T0 + t + rng.random() * 0.5,
        )  # fmt: skip


def summary(store, device, start, end):
    """What a reader asks of [start, end): counts, sums, extremes, energy."""
    conn = store.db.conn
    raw = conn.execute(
        "SELECT count(*), count(soc), sum(soc), min(soc), max(soc), count(remaining_kwh), "
        "sum(remaining_kwh), min(voltage), max(voltage), sum(power_kw), max(health) "
        "FROM telemetry WHERE device = ? AND at >= ? AND at < ?", (device, start, end)
    ).fetchone()  # fmt: skip
    rolled = conn.execute(
        "SELECT sum(readings), sum(soc_n), sum(soc_sum), min(soc_min), max(soc_max), "
        "sum(remaining_kwh_n), sum(remaining_kwh_sum), min(voltage_min), max(voltage_max), "
        "sum(power_kw_sum), max(health_max) FROM telemetry_rollup WHERE device = ? AND "
        "start >= ? AND start < ?", (device, start, end)
    ).fetchone()  # fmt: skip
    # a range is in one form or the other (the tests ask whole hours and minutes)
    picked = rolled if rolled[0] else raw
    return picked + telemetry.energy(conn, device, start, end)


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is y, (a, b)
        else:
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (a, b)


def test_an_hour_and_a_minute_say_the_same_after_the_roll_up(store):
    fill(store, 4 * 3600, random.Random(1))
    ranges = [(T0 + h * 3600, T0 + (h + 1) * 3600) for h in range(3)] + [(T0, T0 + 3 * 3600)]
    minutes = [(T0 + 3 * 3600 + 60 * m, T0 + 3 * 3600 + 60 * (m + 1)) for m in (0, 7, 30)]
    asked = [(r, d) for r in ranges + minutes for d in (7, 8)]
    before = [summary(store, d, *r) for r, d in asked]
    now = T0 + 4 * 3600 + 1000
    # raw kept 1000 s (the last hour's minutes roll), minutes kept 1 hour + 1000 s
    minute_rows, hour_rows = telemetry.roll_up(store, now, raw_s=1000, minute_s=3600 + 1000)
    assert telemetry.trim(store, rows=100) == 100 and telemetry.trim(store) > 10_000
    # 4 hours of minutes, but 19 of device 7's hold nothing; then 3 hours x 2 devices
    assert (minute_rows, hour_rows) == (240 + 240 - 19, 6)
    for (r, d), want in zip(asked, before):
        same(summary(store, d, *r), want)
    conn = store.db.conn
    assert conn.execute("SELECT min(at) FROM telemetry").fetchone()[0] >= now - 1000 - 60 - 900
    hours = conn.execute("SELECT count(*) FROM telemetry_rollup WHERE period = 3600")
    assert hours.fetchone()[0] == 6  # the minutes of the first 3 hours became hours
    first_minute = conn.execute("SELECT min(start) FROM telemetry_rollup WHERE period = 60")
    assert first_minute.fetchone()[0] == T0 + 3 * 3600
    # the quiet 20 minutes of device 7 hold no energy: a gap is unknown, not zero
    _c, _d, held_s = telemetry.energy(conn, 7, T0 + 3600, T0 + 7200)
    assert 3600 - 1200 - 2 <= held_s <= 3600 - 1200 + 2


def test_a_roll_up_again_changes_nothing_and_a_failed_one_leaves_all(store, monkeypatch):
    fill(store, 2 * 3600, random.Random(2))
    now = T0 + 2 * 3600 + 3600
    telemetry.roll_up(store, now, raw_s=1800, minute_s=7200)
    telemetry.trim(store)
    tables = ("telemetry", "telemetry_rollup", "telemetry_horizon")

    def counts():
        return [store.db.execute("SELECT count(*) FROM %s" % t).fetchone()[0] for t in tables]

    done = counts()
    assert telemetry.roll_up(store, now, raw_s=1800, minute_s=7200) == (0, 0)
    assert telemetry.trim(store) == 0
    assert counts() == done

    def torn(*_args):
        raise sqlite3.OperationalError("disk I/O error (a power cut)")

    monkeypatch.setattr(telemetry, "_set_horizon", torn)
    with pytest.raises(sqlite3.OperationalError):
        telemetry.roll_up(store, now + 3600, raw_s=0, minute_s=7200)
    assert counts() == done  # rows, deletions and horizon: all or nothing


def test_contractual_records_stay_append_only_and_telemetry_is_not(store):
    assert "telemetry" not in schema.APPEND_ONLY
    store.record_telemetry(7, soc=50.0, at=T0)
    store.db.execute("DELETE FROM telemetry WHERE device = 7")  # the roll-up may
    store.record_price_signal(12.0, 1, 1)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("DELETE FROM price_signals")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 7200, allow_nan=False), st.floats(-5, 5, allow_nan=False)),
        min_size=2, max_size=60,
    ),
    st.sampled_from([60, 3600]),
)  # fmt: skip
def test_held_energy_is_the_integral_of_the_held_power_in_any_buckets(points, period):
    readings = sorted(points)
    whole = telemetry.held(readings, 0, 7200, 7200)
    split = telemetry.held(readings, 0, 7200, period)
    exact = [0.0, 0.0, 0.0]
    for (t0, p0), (t1, _p) in zip(readings, readings[1:]):
        if t1 - t0 <= telemetry.MAX_HOLD_S:
            exact[0 if p0 < 0 else 1] += abs(p0) * (t1 - t0) / 3600
            exact[2] += t1 - t0
    for got in (whole, split):
        total = [sum(v[i] for v in got.values()) for i in range(3)]
        for x, y in zip(total, exact):
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (total, exact)
    assert all(start % period == 0 for start in split)


# --- energy meters (Home Assistant's kWh counters) ----------------------------------------


def test_energy_meters_count_what_energy_counts_and_outlive_roll_up_trim_and_restart(
    store, tmp_path
):
    fill(store, 2 * 3600, random.Random(3))
    conn = store.db.conn
    charged, discharged = store.energy_meters(7)
    _c, want, _h = telemetry.energy(conn, 7, T0, T0 + 3 * 3600)
    assert discharged > 0.5 and math.isclose(discharged, want, rel_tol=1e-9)
    assert charged > 100  # random remaining energy: every rise past 10 Wh counts
    assert store.energy_meters(8) == (0.0, 0.0)  # it charges at 1 kW, no remaining reported
    assert telemetry.roll_up(store, T0 + 4 * 3600, raw_s=0, minute_s=0) != (0, 0)
    assert telemetry.trim(store) > 0
    assert conn.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 0
    assert store.energy_meters(7) == (charged, discharged)  # exactly: nothing recounted
    with Store(tmp_path / "hub.sqlite") as again:  # a restarted hub reads the same file
        assert again.energy_meters(7) == (charged, discharged)
    # the next reading counts on from there, as if nothing had happened
    last = conn.execute("SELECT at, power_kw FROM energy_meters WHERE device = 7").fetchone()
    after = store.record_telemetry(7, remaining_kwh=0.0, power_kw=1.0, at=last[0] + 60)
    assert after == (charged, discharged + max(last[1], 0) * 60 / 3600)


def test_charged_counts_rises_of_stored_energy_not_jitter_and_never_goes_down(store):
    at = [T0]

    def read(remaining, kw=0.0, step=10):
        at[0] += step
        return store.record_telemetry(7, remaining_kwh=remaining, power_kw=kw, at=at[0])

    seen = [read(5.0), read(5.004), read(4.999), read(5.006), read(5.001)]  # BMS jitter
    assert seen[-1] == (0.0, 0.0)
    seen += [read(5.2), read(5.5), read(6.0)]  # charging (ETP says 0 kW: discharge only)
    assert seen[-1][0] == pytest.approx(6.0 - 4.999)
    seen += [read(5.9, kw=2.0), read(5.5, kw=2.0, step=360), read(5.45, kw=0.0, step=360)]
    assert seen[-1] == pytest.approx((6.0 - 4.999, 2.0 * 720 / 3600))  # held 2 kW, 720 s
    seen.append(read(5.3, step=1000))  # a gap past MAX_HOLD_S counts no power
    at[0] -= 500
    seen.append(read(9.0, kw=5.0, step=0))  # out of order: changes nothing
    assert seen[-1] == seen[-2]
    assert seen == sorted(seen) and [c for c, _d in seen] == sorted(c for c, _d in seen)
