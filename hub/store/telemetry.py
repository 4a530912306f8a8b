"""The batteries' telemetry: kept raw for a window, then rolled up per minute, then per
hour, so that the store grows by hours, not by seconds (a reading a second per battery
is ~7 GB a day for 1,000 batteries). The one writer of telemetry, telemetry_rollup and
telemetry_horizon (schema version 7).

A rollup row (device, period 60 or 3600, start) keeps, for each of soc, remaining_kwh,
voltage and power_kw: how many readings knew it, their sum, min and max; the worst
health; and the energy: a reading's power holds until the next reading, if that comes
within MAX_HOLD_S (a longer gap is unknown, not zero), and charged_kwh, discharged_kwh
and held_s integrate it over the row's period (power_kw < 0 is charging). Sums, counts,
extremes and energies of an hour are those of its minutes, and a minute's those of its
raw readings, exactly: a mean, a maximum or the energy of any range on the grid is the
same before and after the roll-up (energy() reads both).

roll_up(now) moves whole minutes older than raw_s into minute rows and whole hours
older than minute_s into hour rows, each step one transaction (its rows and the horizon
together: a crash leaves all or nothing), a minute of readings at a time; trim() then
deletes the raw readings no longer needed, in short transactions of its own (a reading
before the horizon is never read again, so a crash between the two loses nothing).
Each battery also has energy meters (table energy_meters, written here alone, in the
reading's own transaction), for Home Assistant's Energy dashboard, which wants counters
that never go down:
- discharged_kwh: the integral of power_kw > 0, a reading's power held until the next
  reading within MAX_HOLD_S (a longer gap counts nothing): the same figure energy() gives
  over the same readings, kept as a running sum, so the roll-up and trim of the readings
  cannot lower it.
- charged_kwh: the rises of remaining_kwh. An ETP battery reports discharge power only
  (BESSStatus' discharge_rate is >= 0: charging shows as 0 kW), so charging is seen as its
  stored energy rising. A rise counts once it reaches CHARGE_STEP_KWH above the lowest
  remaining energy since the last counted rise, so a BMS reading that jitters by less
  never counts; it is energy stored (DC, after the charger's losses), and charging and
  discharging between two readings net out.
A reading older than the meter's last with a power (out of order) changes neither.

Measured (bench/telemetry_disk.py, scaled from 100 batteries): a minute of 1,000
batteries at 1 Hz rolls up in ~0.34 s and trims in ~0.11 s, in steps the hub's loop
runs between.
"""

import time

MAX_HOLD_S = 900  # a reading's power holds until the next one, if within this
CHARGE_STEP_KWH = 0.01  # a rise of remaining energy counts as charged from 10 Wh up
BATCH_S = 60  # one minute of readings per transaction
FIELDS = ("soc", "remaining_kwh", "voltage", "power_kw")
_STATS = ", ".join(
    "count(%s), sum(%s), min(%s), max(%s)" % (f, f, f, f) for f in FIELDS
)  # per minute, from raw readings
_ROLLED = ", ".join(
    "sum(%s_n), sum(%s_sum), min(%s_min), max(%s_max)" % (f, f, f, f) for f in FIELDS
)  # per hour, from minute rows
_COLUMNS = (
    "device, period, start, readings, %s, health_max, charged_kwh, discharged_kwh, "
    "held_s" % ", ".join("%s_n, %s_sum, %s_min, %s_max" % (f, f, f, f) for f in FIELDS)
)


_BEFORE = (
    "SELECT at, power_kw FROM telemetry WHERE device = ? AND at >= ? AND at < ? "
    "AND power_kw IS NOT NULL ORDER BY at DESC LIMIT 1"
)
_AFTER = (
    "SELECT at, power_kw FROM telemetry WHERE device = ? AND at >= ? AND at < ? "
    "AND power_kw IS NOT NULL ORDER BY at LIMIT 1"
)


def held(readings, start, end, period):
    """{bucket start: [charged kWh, discharged kWh, held s]} of [start, end) in buckets
    of `period` s, from [(at, power_kw)] oldest first (power known), which must reach
    MAX_HOLD_S beyond both ends."""
    out = {}
    for (t0, p0), (t1, _p1) in zip(readings, readings[1:]):
        if t1 - t0 > MAX_HOLD_S or t1 <= start or t0 >= end:
            continue  # a gap (unknown), or outside
        a, b = max(t0, start), min(t1, end)
        side = 0 if p0 < 0 else 1
        kw = abs(p0) / 3600
        while a < b:
            bucket = a // period * period
            c = min(b, bucket + period)
            got = out.get(bucket)
            if got is None:
                got = out[bucket] = [0.0, 0.0, 0.0]
            got[side] += kw * (c - a)
            got[2] += c - a
            a = c
    return {int(bucket): got for bucket, got in out.items()}


def horizon(conn, period):
    """Until when the readings were rolled into rows of `period` (None: never)."""
    row = conn.execute("SELECT until FROM telemetry_horizon WHERE period = ?", (period,))
    row = row.fetchone()
    return None if row is None else row[0]


def roll_up(store, now=None, raw_s=6 * 3600, minute_s=2 * 86400, batches=None):
    """Roll what is old enough (at most `batches` transactions of each kind; None: all
    that is due); -> (minute rows, hour rows) written."""
    now = time.time() if now is None else now
    written = [0, 0]
    for i, (step, target) in enumerate(((_minutes, (now - raw_s) // 60 * 60),
                                        (_hours, (now - minute_s) // 3600 * 3600))):  # fmt: skip
        done = 0
        while batches is None or done < batches:
            with store.transaction() as conn:
                got = step(conn, target)
            if got is None:
                break
            written[i] += got
            done += 1
    return tuple(written)


def _minutes(conn, target):
    """One batch of raw readings before target into minute rows; None when none is due."""
    since = horizon(conn, 60)
    if since is None:
        first = conn.execute("SELECT min(at) FROM telemetry").fetchone()[0]
        if first is None:
            return None
        since = first // 60 * 60
    following = conn.execute("SELECT min(at) FROM telemetry WHERE at >= ?",
                             (since - MAX_HOLD_S,)).fetchone()[0]  # fmt: skip
    if following is not None and following > since + MAX_HOLD_S:  # a gap: skip to it
        since = max(since, min(target, following // 60 * 60))
    end = min(target, since + BATCH_S)  # one minute: its stats group by device alone
    if end <= since:
        return None
    stats = {
        device: rest
        for device, *rest in conn.execute(
            "SELECT device, count(*), %s, max(health) FROM telemetry WHERE at >= ? "
            "AND at < ? GROUP BY device" % _STATS, (since, end))
    }  # fmt: skip
    inside = {}  # device -> [(at, power_kw)], oldest first (the index's order: no sort)
    for device, at, kw in conn.execute(
        "SELECT device, at, power_kw FROM telemetry INDEXED BY telemetry_at WHERE at >= ? "
        "AND at < ? AND power_kw IS NOT NULL ORDER BY at", (since, end)):  # fmt: skip
        inside.setdefault(device, []).append((at, kw))
    energy = {}
    # A device seen last before since - MAX_HOLD_S has nothing that holds into the minute.
    for (device,) in conn.execute("SELECT id FROM devices WHERE last_seen >= ?",
                                  (since - MAX_HOLD_S,)).fetchall():  # fmt: skip
        # the reading before may hold into the minute; the one after ends the last's hold
        before = conn.execute(_BEFORE, (device, since - MAX_HOLD_S, since)).fetchall()
        after = conn.execute(_AFTER, (device, end, end + MAX_HOLD_S)).fetchall()
        got = held(before + inside.get(device, []) + after, since, end, 60).get(since)
        if got is not None:
            energy[device] = got
    none = [0] + [0, None, None, None] * len(FIELDS) + [None]  # no reading in the minute
    rows = [(device, 60, since, *stats.get(device, none), *energy.get(device, (0.0, 0.0, 0.0)))
            for device in sorted(stats.keys() | energy.keys())]  # fmt: skip
    _write(conn, rows)
    _set_horizon(conn, 60, end)  # the readings before it are read no more: trim() them
    return len(rows)


def trim(store, rows=None):
    """Delete raw readings the roll-up no longer needs (a reading is kept until every
    minute it may hold into is rolled up), at most `rows` (None: all) in one
    transaction; -> how many. Apart from the roll-up, so each commit stays short: a
    minute of 1,000 batteries is 60,000 readings, ~0.7 s to delete at once."""
    with store.transaction() as conn:
        until = horizon(conn, 60)
        if until is None:
            return 0
        if rows is None:
            return conn.execute("DELETE FROM telemetry WHERE at < ?",
                                (until - MAX_HOLD_S,)).rowcount  # fmt: skip
        return conn.execute(
            "DELETE FROM telemetry WHERE id IN (SELECT id FROM telemetry WHERE at < ? LIMIT ?)",
            (until - MAX_HOLD_S, rows),
        ).rowcount


def _hours(conn, target):
    """Minute rows of one hour before target into an hour row; None when none is due."""
    since = horizon(conn, 3600)
    if since is None:
        first = conn.execute("SELECT min(start) FROM telemetry_rollup WHERE period = 60")
        first = first.fetchone()[0]
        if first is None:
            return None
        since = first // 3600 * 3600
    after = conn.execute("SELECT min(start) FROM telemetry_rollup WHERE period = 60 AND "
                         "start >= ?", (since,)).fetchone()[0]  # fmt: skip
    if after is not None:  # a gap: skip to what follows
        since = max(since, min(target, after // 3600 * 3600))
    minutes = horizon(conn, 60) or since
    end = min(target, since + 3600, minutes // 3600 * 3600)  # whole hours of minutes
    if end <= since:
        return None
    rows = conn.execute(
        "SELECT device, 3600, ?, sum(readings), %s, max(health_max), sum(charged_kwh), "
        "sum(discharged_kwh), sum(held_s) FROM telemetry_rollup WHERE period = 60 "
        "AND start >= ? AND start < ? GROUP BY device" % _ROLLED,
        (since, since, end),
    ).fetchall()
    _write(conn, rows)
    conn.execute("DELETE FROM telemetry_rollup WHERE period = 60 AND start >= ? AND start < ?",
                 (since, end))  # fmt: skip
    _set_horizon(conn, 3600, end)
    return len(rows)


def record(conn, device, at, reading):
    """A raw reading (soc, remaining_kwh, voltage, power_kw, health), in the caller's
    transaction (Store.record_telemetry, which also keeps the device's last status).
    -> the battery's meters after it: (charged kWh, discharged kWh)."""
    conn.execute(
        "INSERT INTO telemetry (device, at, soc, remaining_kwh, voltage, power_kw, health) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (device, at) + tuple(reading))  # fmt: skip
    return _count(conn, device, at, reading[1], reading[3])


def _count(conn, device, at, remaining, power):
    """Move the battery's meters by one reading (the module's doc says how)."""
    row = conn.execute("SELECT charged_kwh, discharged_kwh, at, power_kw, low_kwh FROM "
                       "energy_meters WHERE device = ?", (device,)).fetchone()  # fmt: skip
    if row is None:
        conn.execute("INSERT INTO energy_meters VALUES (?, 0.0, 0.0, ?, ?, ?)",
                     (device, at, power, remaining))  # fmt: skip
        return 0.0, 0.0
    charged, discharged, last_at, last_kw, low = row
    if at < last_at:  # out of order: its time is counted already
        return charged, discharged
    if power is not None:  # as held(): the last known power holds over unknown ones
        if last_kw is not None and last_kw > 0 and at - last_at <= MAX_HOLD_S:
            discharged += last_kw * (at - last_at) / 3600
        last_at, last_kw = at, power
    if remaining is not None:
        if low is None or remaining < low:
            low = remaining
        elif remaining >= low + CHARGE_STEP_KWH:
            charged, low = charged + remaining - low, remaining
    conn.execute("UPDATE energy_meters SET charged_kwh = ?, discharged_kwh = ?, at = ?, "
                 "power_kw = ?, low_kwh = ? WHERE device = ?",
                 (charged, discharged, last_at, last_kw, low, device))  # fmt: skip
    return charged, discharged


def meters(conn, device):
    """(charged kWh, discharged kWh) of a battery so far; (0, 0) before its first reading."""
    row = conn.execute("SELECT charged_kwh, discharged_kwh FROM energy_meters WHERE "
                       "device = ?", (device,)).fetchone()  # fmt: skip
    return (0.0, 0.0) if row is None else tuple(row)


def _write(conn, rows):
    conn.executemany(
        "INSERT INTO telemetry_rollup (%s) VALUES (%s)" % (_COLUMNS, ", ".join("?" * 24)),
        [tuple(r) for r in rows],
    )


def _set_horizon(conn, period, until):
    conn.execute(
        "INSERT INTO telemetry_horizon (period, until) VALUES (?, ?) "
        "ON CONFLICT (period) DO UPDATE SET until = excluded.until",
        (period, until),
    )


def energy(conn, device, start, end):
    """(charged kWh, discharged kWh, held s) of a battery over [start, end): its rollup
    rows that start inside (put start and end on the hour for data rolled into hours,
    on the minute for minutes) and its raw readings after them."""
    charged, discharged, held_s = conn.execute(
        "SELECT coalesce(sum(charged_kwh), 0), coalesce(sum(discharged_kwh), 0), "
        "coalesce(sum(held_s), 0) FROM telemetry_rollup WHERE device = ? AND start >= ? "
        "AND start < ?",
        (device, start, end),
    ).fetchone()
    raw_from = max(start, horizon(conn, 60) or start)
    if raw_from < end:
        power = conn.execute(
            "SELECT at, power_kw FROM telemetry WHERE device = ? AND at >= ? AND at < ? "
            "AND power_kw IS NOT NULL ORDER BY at, id",
            (device, raw_from - MAX_HOLD_S, end + MAX_HOLD_S),
        ).fetchall()
        for c, d, h in held(power, raw_from, end, end - raw_from).values():
            charged, discharged, held_s = charged + c, discharged + d, held_s + h
    return charged, discharged, held_s
