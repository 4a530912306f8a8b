"""The independent check of the auction: welfare maximum of a book by linear
programming (scipy's HiGHS), for the tests and bench/clearing.py. scipy is a
dev dependency; nothing in the hub's run time imports this module."""


def lp_welfare_and_volume(bids, asks):
    """(welfare maximum, largest volume at it) of a book of auction.Orders.

    Maximise sum(bid price * x) - sum(ask price * y) subject to sum x == sum y,
    0 <= x, y <= quantity; then the largest volume among allocations within 1e-9
    of that welfare (zero-surplus trades count, as in the auction's rule).
    """
    from scipy.optimize import linprog

    if not bids or not asks:
        return 0.0, 0.0
    cost = [-o.price for o in bids] + [o.price for o in asks]  # minimise -welfare
    balance = [[1.0] * len(bids) + [-1.0] * len(asks)]
    bounds = [(0, o.quantity) for o in bids + asks]
    best = linprog(cost, A_eq=balance, b_eq=[0], bounds=bounds, method="highs")
    if best.status != 0:
        raise RuntimeError("LP failed: %s" % best.message)
    top = -best.fun
    volume = linprog(
        [-1.0] * len(bids) + [0.0] * len(asks), A_ub=[cost],
        b_ub=[-top + 1e-9 * max(1.0, abs(top))], A_eq=balance, b_eq=[0], bounds=bounds,
        method="highs",
    )  # fmt: skip
    if volume.status != 0:
        raise RuntimeError("LP failed: %s" % volume.message)
    return top, -volume.fun
