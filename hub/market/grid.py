"""The market's slot grid, and who has heard it: one owner of both.

The grid is (before s, from unix s, after s) (protocol/contract.py slot_length): hub.toml's
slot_s until governance moves it on (market.slot_s). The market maker names slots on it,
the ledger derives each contract's length from it, the CoAP resource /price tells it to
the batteries that observe it (heard()), and the hub trades past a change only the
batteries known to have it (off_grid()).
"""

import logging
import math
import time

from protocol import contract

log = logging.getLogger(__name__)

NOTICE_SLOTS = 2  # a battery sells its next slot: two slots' notice reach it in time
MAX_NOTICE_S = 86400


class SlotGrid:
    def __init__(self, slot_s, gate_s, answer_s, scheduled=None):
        self.value = tuple(scheduled) if scheduled else (slot_s, 0, slot_s)
        self.gate_s, self.answer_s = gate_s, answer_s
        self._asked = None  # a governed slot length already handled: said once, not every slot
        self._heard = set()  # batteries that heard the grid (hub/integrations/coap.py)
        self._told_off = set()  # (battery, grid) told once it is not traded

    @property
    def slot_s(self):
        """The slot length in force after the (last) change."""
        return self.value[2]

    def length(self, start):
        return contract.slot_length(self.value, start)

    def next_start(self, now):
        return contract.next_slot(self.value, now)

    def slot_name(self, market_maker, start):
        return contract.slot_name(self.length(start), self.gate_s, market_maker, start)

    def heard(self, device_id):
        """This battery heard the grid (it observed /price): it may be traded past a change."""
        self._heard.add(device_id)

    def schedule(self, want, now):
        """A slot length governance set becomes the grid's from the first boundary both
        lengths share at least NOTICE_SLOTS slots ahead: by then every battery that
        observes the hub's /price over CoAP has heard it, and no slot straddles the
        change. One at a time: a newer value waits for it. -> the new grid, to be recorded
        (hub/controls.py GRID, so a restarted hub keeps it), or None."""
        if isinstance(want, float) and want.is_integer():
            want = int(want)
        _before, at, current = self.value
        if want is None or want == current or now < at or want == self._asked:
            return None
        self._asked = want
        if not isinstance(want, int) or want - self.gate_s < self.answer_s + 0.5:
            log.warning("market: governance set slot_s = %r: it leaves no time before the gate "
                        "(gate_s %s, answer_s %s): not applied",
                        want, self.gate_s, self.answer_s)  # fmt: skip
            return None
        common = current * want // math.gcd(current, want)
        start = -(-(int(now) + NOTICE_SLOTS * current) // common) * common
        if start - now > MAX_NOTICE_S:
            log.warning("market: governance set slot_s = %d: its first boundary shared with "
                        "%d s slots is %.0f h away: not applied",
                        want, current, (start - now) / 3600)  # fmt: skip
            return None
        self.value = (current, start, want)
        at_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))
        log.info("market: slot_s %d -> %d from %s (governance; batteries hear it on /price)",
                 current, want, at_text)  # fmt: skip
        return self.value

    def off_grid(self, start, devices, configs):
        """Which of `devices` the hub must not trade in the slot at `start`. Every battery
        shares a grid that never changed, and the slots before a change; from it, only one
        known to have it: it heard the grid (heard()), or the config the hub provisioned it
        with (battery-<id>.json, `gridbid hub keys`) has the new slot_s. configs() reads
        those, {device: config}, called only when some battery is unsure. Others would sell
        other slots than the hub buys: each is told once and left out."""
        before, at, after = self.value
        unsure = [d for d in devices if d not in self._heard]
        if before == after or start < at or not unsure:
            return set()
        known = configs()
        off = {d for d in unsure if known.get(d, {}).get("slot_s") != after}
        for device_id in sorted(off):
            if (device_id, self.value) not in self._told_off:
                self._told_off.add((device_id, self.value))
                log.warning("battery %d is not known to have the new slot grid (%d s slots "
                            "from %d): not traded from then. Set its coap_hub (it hears the "
                            "grid), or provision it with slot_s = %d (gridbid hub keys; "
                            "tools/flash.py provision)", device_id, after, at, after)  # fmt: skip
        return off
