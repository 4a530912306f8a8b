"""One sealed-bid auction of one offer of energy (multi-unit, pay-as-bid).

The battery offers `kwh` at `reserve` c/kWh, for the market slot that starts at
`slot_start` (node.py's open offer is its Auction). Bids arrive until the auction
closes, `window_ms` after the first bid. Bids at or above the reserve are
accepted best first (ties: the earlier bid), each at its own price, while
offered energy is left; a bid for 0 kWh asks for all that is left. So when
every bid asks for the whole offer (the paper's case) the best bid alone wins,
and when a market maker has split the offer between buyers at one clearing
price, every buyer's share is accepted. Every other bid is rejected: outbid
(nothing left for it), or below the reserve. One bid per aggregator counts, its
latest, so an aggregator may raise its bid while the auction is open.

Energy is counted in whole tenths of a Wh (UNITS per kWh, the resolution of an accepted
share): in floats, 0.7497 - 0.7496 is a hair under 0.0001, and a market maker's last
0.1 Wh share was once refused as outbid.

Pure logic, no I/O: the node sends the answers close() returns.
"""

from protocol import message
from protocol.compat import const

_UNITS = const(10000)  # per kWh: 0.1 Wh


def units(kwh):
    """kWh as whole tenths of a Wh (a bid for any energy asks for at least one)."""
    n = int(kwh * _UNITS + 0.5)
    return n if n > 0 or kwh <= 0 else 1


class Bid:
    def __init__(self, peer, message_id, price, kwh, at_ms):
        self.peer = peer  # the aggregator's key id
        self.message_id = message_id
        self.price = price
        self.kwh = kwh  # 0: as much as the offer has
        self.at_ms = at_ms


class Auction:
    def __init__(self, reserve, kwh, window_ms, now_ms, slot_start=None):
        self.reserve = reserve
        self.kwh = kwh
        self.slot_start = slot_start  # the market slot the energy is for (unix s)
        self.window_ms = window_ms  # now_ms (when the offer opened) is not kept: nothing needs it
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
        """-> ([(Bid, kWh accepted)], [(Bid, reject reason)]) for every bid received."""
        ranked = sorted(self.bids.values(), key=lambda bid: (-bid.price, bid.at_ms))
        winners, left = [], units(self.kwh)
        rejects = [(b, message.REJECT_OUTBID) for b in self.replaced]
        for bid in ranked:
            if bid.price < self.reserve:
                rejects.append((bid, message.REJECT_BELOW_RESERVE))
            elif left <= 0:
                rejects.append((bid, message.REJECT_OUTBID))
            else:
                share = min(units(bid.kwh), left) if bid.kwh > 0 else left
                winners.append((bid, share / _UNITS))
                left -= share
        return winners, rejects
