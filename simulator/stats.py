"""Means and 95 % confidence intervals across an experiment's repeats."""

import math

# Student's t, two-sided 95 %, by degrees of freedom (1..30); 1.96 beyond
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df):
    """Beyond the table, 1.96 + 2.4/df (within 0.3 % of the true quantile)."""
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def mean_ci(values):
    """(mean, half-width of its 95 % interval) of the values that are not None;
    (None, None) when there are none, half-width None with only one."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, t95(len(values) - 1) * math.sqrt(var / len(values))


def gain_pct(new, old):
    """100 (new - old) / old, or None when old is 0 or either is unknown."""
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / old
