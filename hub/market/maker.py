"""The market maker: the one owner of each market slot, from its first layer to
its trades.

Per slot (a GridWorks name, `rt<len>gate<gate>.<market maker>.<start>`):

1. Batteries' offers enter the slot's book as ask layers at their reserve price
   (owner: the battery's device id); aggregators' bids enter as bid layers
   (owner: the aggregator's name). A layer is written to the store before it
   counts, so a restarted hub rebuilds every open book from the store.
2. The price signal (hub.market.price_signal over the book's demand and supply)
   is the indicative price while the gate is open; it is published to devices
   in their Queries and recorded.
3. At gate closure (start - gate) the book clears once (hub.market.clearing).
   The trades are recorded with the slot's name as clearing id, so a hub that
   restarts mid-slot and clears again records nothing twice. The fills are
   paired into bilateral trades, highest bid with cheapest ask, all at the one
   clearing price. Publishing the price makes them binding: each buyer then
   sends its battery an ETP Bid at the clearing price for the traded kWh, and
   the battery's BidAccept and the buyer's BidConfirm make the contract.
"""

from collections import namedtuple

from hub.market.clearing import ASK, BID, MarketSlot
from hub.market.grid import SlotGrid
from hub.market.price_signal import PriceSignal
from protocol import contract

Trade = namedtuple("Trade", "slot buyer battery kwh price")
# Books kept in memory, the last made: the open slot's and the gated one's are all a hub
# works on; an older one, asked for again, is rebuilt from the store (as after a restart).
KEEP_BOOKS = 8


class GateOpen(ValueError):
    """A slot was asked to clear before its gate closed."""


class MarketMaker:
    def __init__(self, store, name="hub", slot_s=900, gate_s=300, signal=None, grid=None):
        if not 0 <= gate_s < slot_s:
            raise ValueError("gate_s must be 0 <= gate_s < slot_s")
        self.store = store
        self.name = name
        self.slot_s, self.gate_s = slot_s, gate_s
        # The slots' grid (hub/market/grid.py): the hub's, which governance may move on.
        self.grid = grid or SlotGrid(slot_s, gate_s, answer_s=0.0)
        self.signal = signal or PriceSignal(p_balance=16.0, p_con=6.0)
        self._books = {}  # slot name -> MarketSlot, the KEEP_BOOKS made last
        # Since this process started, for /metrics (hub/integrations/web/metrics.py):
        self.slots_recorded = 0  # clearings recorded, one per slot the hub ran
        self.slots_traded = 0  # of those, the ones that traded (a price and a volume)
        self.last_price = None  # c/kWh of the last one that traded

    # --- slots ----------------------------------------------------------------

    def open_slot(self, now_s):
        """The name of the first slot whose gate is still open at now_s."""
        return self.grid.slot_name(self.name, self.grid.next_start(now_s + self.gate_s))

    def gate_closed(self, slot_name, now_s):
        _len, gate_s, _maker, start = contract.parse_slot_name(slot_name)
        return now_s >= start - gate_s

    def book(self, slot_name):
        """The slot's book; rebuilt from the store after a restart (same order ids)."""
        book = self._books.get(slot_name)
        if book is None:
            book = MarketSlot(slot_name)
            for row in self.store.bids(slot_name):
                layer = book.add(row["side"], row["owner"], row["price"], row["kwh"], row["ref"])
                if layer.order_id != row["order_id"]:
                    raise RuntimeError("slot %s: stored layers have gaps" % slot_name)
            self._books[slot_name] = book
            while len(self._books) > KEEP_BOOKS:  # a hub runs for months: a book per slot
                del self._books[next(iter(self._books))]  # the one made longest ago
        return book

    # --- orders ---------------------------------------------------------------

    def offer(self, slot_name, device_id, kwh, reserve, ref=None, at=None):
        """A battery's offer: kWh at no less than its reserve (an ask layer)."""
        # The offer first: it refuses unknown batteries and bad values before any layer.
        self.store.record_offer(device_id, slot_name, kwh, reserve, at=at)
        return self._add(slot_name, ASK, device_id, reserve, kwh, ref, at)

    def bid(self, slot_name, aggregator, price, kwh, ref=None, at=None):
        """An aggregator's bid layer: up to kWh at no more than price."""
        return self._add(slot_name, BID, aggregator, price, kwh, ref, at)

    def _add(self, slot_name, side, owner, price, kwh, ref, at):
        book = self.book(slot_name)
        before = len(book.layers)
        layer = book.add(side, owner, price, kwh, ref)
        if len(book.layers) > before:  # a new layer, not a re-sent one
            try:
                self.store.record_bid(slot_name, layer.order_id, side, owner, price, kwh, ref, at)
            except ValueError:
                book.undo(layer, ref)  # not stored, so it does not count
                raise
        return layer

    # --- prices and clearing ------------------------------------------------------

    def indicative_price(self, slot_name, at=None):
        return self.price_signal(slot_name, at)[0]

    def tune(self, **params):
        """Set the price signal's parameters (p_balance, p_con, k: governance's) from the
        next signal on. -> {name: (old, new)} of those that changed."""
        changed = {}
        for name, value in params.items():
            old = getattr(self.signal, name)
            if value is not None and float(value) != old:
                setattr(self.signal, name, float(value))
                changed[name] = (old, float(value))
        return changed

    def price_signal(self, slot_name, at=None):
        """The price signal from the slot's book, recorded. -> (price, demand, supply)"""
        book = self.book(slot_name)
        demand = sum(o.quantity for o in book.bids)
        supply = sum(o.quantity for o in book.asks)
        price = self.signal.price(demand, supply)
        self.store.record_price_signal(price, demand, supply, slot=slot_name, at=at)
        return price, demand, supply

    def close(self, slot_name, now_s, at=None):
        """Clear the slot once its gate closed, and record its trades -> (Clearing, [Trade])."""
        result, trades = self.clear(slot_name, now_s)
        self.record(slot_name, result, at)
        return result, trades

    def clear(self, slot_name, now_s):
        """The clearing of a slot whose gate closed, not recorded yet: a pure function of
        its recorded book, so a restarted hub clears it the same. -> (Clearing, [Trade])"""
        if not self.gate_closed(slot_name, now_s):
            raise GateOpen("slot %s: the gate is still open at %d" % (slot_name, now_s))
        book = self.book(slot_name)
        result = book.clear()
        return result, pair(slot_name, book, result)

    def record(self, slot_name, result, at=None):
        """Record a clearing's trades (idempotent: store.record_trades)."""
        self.slots_recorded += 1
        if result.volume_kwh > 0:
            self.store.record_trades(slot_name, slot_name, result.fills, result.price, at=at)
            self.slots_traded += 1
            self.last_price = result.price


def pair(slot_name, book, result):
    """Bilateral trades from per-order fills: highest bids with cheapest asks."""
    orders = {o.order_id: o for o in book.layers}
    filled = {}
    for order_id, _owner, _side, kwh in result.fills:
        filled[order_id] = kwh
    bids = sorted((orders[i] for i in filled if orders[i].side == BID),
                  key=lambda o: (-o.price, o.order_id))  # fmt: skip
    asks = sorted((orders[i] for i in filled if orders[i].side == ASK),
                  key=lambda o: (o.price, o.order_id))  # fmt: skip
    left = {i: round(kwh * 1_000_000) for i, kwh in filled.items()}  # whole mWh, as the auction
    trades, a = [], 0
    for bid in bids:
        while left[bid.order_id] and a < len(asks):
            ask = asks[a]
            mwh = min(left[bid.order_id], left[ask.order_id])
            trades.append(Trade(slot_name, bid.owner, ask.owner, mwh / 1_000_000, result.price))
            left[bid.order_id] -= mwh
            left[ask.order_id] -= mwh
            if not left[ask.order_id]:
                a += 1
    return trades
