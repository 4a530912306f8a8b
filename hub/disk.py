"""The store's disk, kept: telemetry rolled up on a schedule (hub/store/telemetry.py), and
the store's size against its budget (hub.toml disk_budget_mb), told at 80 %: a log
line, a "disk" event (MQTT <base>/disk, the page's /ws) and the page's status.

A Pi's SD card fills with 1 Hz telemetry (~7 GB a day for 1,000 batteries); what is
contractual (bids, trades, contracts, settlements, controls, refusals) is never
deleted, so the budget is a warning to act on (a larger card, a shorter raw window, an
export), not something the hub enforces by deleting records.
"""

import asyncio
import logging
import os
import time

from hub.store import telemetry

log = logging.getLogger(__name__)
EVERY_S = 300  # a roll-up and a size check this often
WARN_AT = 0.8  # of the budget


class Disk:
    def __init__(self, store, events, path, raw_h, minutes_d, budget_mb):
        self.store, self.events, self.path = store, events, str(path)
        self.raw_s, self.minute_s = raw_h * 3600, minutes_d * 86400
        self.budget_mb = budget_mb  # 0: none
        self.used_mb = None
        self._warned = False

    def status(self):
        """{"used_mb", "budget_mb", "share"} as of the last check (the page's status)."""
        share = self.used_mb / self.budget_mb if self.budget_mb and self.used_mb else None
        return {"used_mb": self.used_mb, "budget_mb": self.budget_mb or None, "share": share}

    async def run(self):
        while True:
            await self.keep()
            await asyncio.sleep(EVERY_S)

    async def keep(self, now=None):
        """One round: roll up what is due, a batch at a time (the loop runs between
        batches: the market's slots must not wait), then weigh the store."""
        now = time.time() if now is None else now
        rolled = [0, 0]
        while True:
            got = telemetry.roll_up(self.store, now, self.raw_s, self.minute_s, batches=1)
            if got == (0, 0):
                break
            rolled = [rolled[0] + got[0], rolled[1] + got[1]]
            await asyncio.sleep(0)
        while telemetry.trim(self.store, rows=5000):
            await asyncio.sleep(0)
        if rolled != [0, 0]:
            log.info("telemetry rolled up: %d minute rows, %d hour rows", *rolled)
        self.weigh()

    def weigh(self):
        self.used_mb = round(sum(_size(self.path + end) for end in ("", "-wal", "-shm")) / 1e6, 1)
        if not self.budget_mb:
            return
        share = self.used_mb / self.budget_mb
        if share >= WARN_AT and not self._warned:
            log.warning("disk: the store uses %.0f MB, %.0f %% of its %d MB budget "
                        "(hub.disk_budget_mb): export and move old records, shorten "
                        "telemetry_raw_h, or give it more room", self.used_mb, 100 * share,
                        self.budget_mb)  # fmt: skip
        self._warned = share >= WARN_AT
        self.events.emit("disk", **self.status())


def _size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
