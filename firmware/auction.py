"""One sealed-bid auction of one offer of energy (pay-as-bid).

The battery offers `kwh` at `reserve` c/kWh. Bids arrive until the auction
closes, `window_ms` after the first bid. The best bid at or above the reserve
wins (ties: the earlier bid); it is accepted for at most the offered energy,
at its own price. Every other bid is rejected: outbid, or below the reserve.
One bid per aggregator counts, its latest, so an aggregator may raise its bid
while the auction is open.

Pure logic, no I/O: the node sends the answers close() returns.
"""

from protocol import message


class Bid:
    def __init__(self, peer, message_id, price, kwh, at_ms):
        self.peer = peer  # the aggregator's key id
        self.message_id = message_id
        self.price = price
        self.kwh = kwh
        self.at_ms = at_ms


class Auction:
    def __init__(self, reserve, kwh, window_ms, now_ms):
        self.reserve = reserve
        self.kwh = kwh
        self.window_ms = window_ms
        self.opened_ms = now_ms
        self.closes_ms = None  # set by the first bid
        self.bids = {}  # peer -> its latest Bid
        self.replaced = []  # earlier bids of a peer: rejected when the auction closes

    def add(self, bid):
        if self.closes_ms is None:
            self.closes_ms = bid.at_ms + self.window_ms
        earlier = self.bids.get(bid.peer)
        if earlier is not None:
            self.replaced.append(earlier)
        self.bids[bid.peer] = bid

    def due(self, now_ms):
        return self.closes_ms is not None and now_ms >= self.closes_ms

    def close(self):
        """-> (winner Bid or None, [(Bid, reject reason)]) for every bid received."""
        ranked = sorted(self.bids.values(), key=lambda b: (-b.price, b.at_ms))
        winner = ranked[0] if ranked and ranked[0].price >= self.reserve else None
        rejects = [(b, message.REJECT_OUTBID) for b in self.replaced]
        for bid in ranked:
            if bid is winner:
                continue
            below = bid.price < self.reserve
            rejects.append((bid, message.REJECT_BELOW_RESERVE if below else message.REJECT_OUTBID))
        return winner, rejects
