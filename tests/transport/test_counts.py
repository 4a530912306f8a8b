"""transport/counts.py: counts by reason from a fixed set, whatever reasons come."""

from transport.counts import Counts


def test_reasons_outside_the_set_count_as_other_and_the_set_never_grows():
    counts = Counts(("tag", "replay"))
    for reason in ("tag", "tag", "replay", "127.0.0.1", "x" * 1000, None, "TAG"):
        counts.add(reason)
    assert counts.by_reason == {"tag": 2, "replay": 1, "other": 4}
    assert counts["other"] == 4
