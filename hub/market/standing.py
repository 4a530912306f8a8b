"""An aggregator's allowance in the market, whatever sessions it opens (a new session
resets nothing): messages per second (a token bucket, a token more per 16 KiB of a
message) and audit rows of its refusals per second. hub/market/exchange.py charges it."""

import time

LIMITS = {
    # Messages per second per aggregator (a token bucket). A buyer reports each contract
    # twice right after the gate: the burst holds that for 2,000 batteries won at once.
    "rate": 1000.0,
    "burst": 4000,
    "layers_per_message": 1000,
    "reports_per_message": 1000,  # contract reports in one `contracts` message (a token each)
    "layers_per_slot": 20000,  # bid layers one aggregator may add to a slot
    "refusal_rows_per_s": 20,  # audit rows per aggregator per second; more are counted
}


class Refused(ValueError):
    """What the market refuses, and why (one line, to the aggregator and the audit)."""


class Standing:
    def __init__(self, key_id):
        self.key_id = key_id
        self.tokens, self._filled_at = LIMITS["burst"], time.monotonic()
        self.rows_second, self.rows_this_second, self.unlogged = 0, 0, 0

    def take(self, tokens=1):
        """Spend tokens, if it has them."""
        now = time.monotonic()
        self.tokens = min(LIMITS["burst"], self.tokens + (now - self._filled_at) * LIMITS["rate"])
        self._filled_at = now
        if self.tokens < tokens:
            return False
        self.tokens -= tokens
        return True

    def audit(self):
        """May a refusal have an audit row now? -> None (no: it is counted), or how many
        were held back since its last row."""
        second = int(time.monotonic())
        if second != self.rows_second:
            self.rows_second, self.rows_this_second = second, 0
        if self.rows_this_second >= LIMITS["refusal_rows_per_s"]:
            self.unlogged += 1
            return None
        held, self.unlogged = self.unlogged, 0
        self.rows_this_second += 1
        return held
