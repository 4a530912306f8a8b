"""Counts by reason, for the hub's /metrics (hub/integrations/web/metrics.py).

The component that refuses something owns its counts and adds to them; the metrics
read them at scrape time. The reasons are a fixed tuple named in the code: a reason
outside it counts as "other", so nothing a peer sends (its address, a type name it
made up) ever becomes a label value, and the set of counters never grows.
"""


class Counts:
    def __init__(self, reasons):
        self.by_reason = dict.fromkeys(tuple(reasons) + ("other",), 0)

    def add(self, reason):
        if reason not in self.by_reason:
            reason = "other"
        self.by_reason[reason] += 1

    def __getitem__(self, reason):
        return self.by_reason[reason]
