"""A cleared slot while its buyers buy: its fills, and the state of each one's contract
as its buyer reports it (the market API's `contract`). The rules of a report live here,
with the state they change (hub/market/exchange.py finds the slot and the session).

    fill --Received--> Received --Confirmed--> Confirmed
                                --Withdrawn--> TerminatedByAtn
    (deadline: a Received one is withdrawn, a fill never reported has "no contract")

Received carries the battery's accept (bid_id, price = the clearing price, kWh within
the fill, kW); Confirmed the id of the BidConfirm about to leave, which no other contract
of that battery holds (its receipt names it).
"""

from hub.market import whole, within
from hub.market.standing import Refused
from protocol import message

STATES = ("Received", "Confirmed", "Withdrawn")
MAX_ID = 2**63 - 1  # ETP message ids as the store keeps them (SQLite's integers)


class Cleared:
    def __init__(self, name, start, price, fills):
        self.name, self.start, self.price = name, start, price
        self.fills = fills  # (buyer, device) -> kWh
        self.contracts = {}  # (buyer, device) -> (contract id, state)

    def settled(self):
        """Every fill reported Confirmed or Withdrawn (the buyers are done)."""
        done = {k for k, (_c, state) in self.contracts.items() if state != "Received"}
        return done >= set(self.fills)

    def finish(self, ledger):
        """The deadline passed: a contract still Received is withdrawn (its battery's
        accept lapses unconfirmed). -> {(buyer, device): (id, state)}."""
        for key, (contract_id, state) in list(self.contracts.items()):
            if state == "Received":
                ledger.withdrawn(contract_id, "not confirmed by aggregator %d in time" % key[0])
                self.contracts[key] = (contract_id, "TerminatedByAtn")
        for key in set(self.fills) - set(self.contracts):
            self.contracts[key] = (None, "no contract")
        return self.contracts

    def report(self, buyer, msg, ledger, store):
        """A buyer's report (in the caller's store transaction). -> the answer; Refused."""
        device, state = msg.get("device"), msg.get("state")
        if not whole(device, 2**32 - 1):
            raise Refused("device must be a battery's id")
        key = (buyer, device)
        if key not in self.fills:
            raise Refused("no fill of battery %r for you in slot %s" % (device, self.name))
        if state not in STATES:
            raise Refused("state must be one of %s" % (STATES,))
        held = self.contracts.get(key)
        if state == "Received":
            if held is not None:
                raise Refused("battery %d's contract of slot %s is already reported"
                              % (device, self.name))  # fmt: skip
            bid_id, kwh, kw, price = (msg.get(k) for k in ("bid_id", "kwh", "kw", "price"))
            if not whole(bid_id, MAX_ID) or not within(kw, 1000.0) or kw <= 0:
                raise Refused("bid_id must be a message id below 2^63 and kw a power in kW")
            if not within(kwh, self.fills[key] + 1e-6) or kwh <= 0:
                raise Refused("kwh must be within the fill's %.6f" % self.fills[key])
            if not within(price, message.MAX_PRICE) or abs(price - self.price) > 1e-6:
                raise Refused("price must be the clearing price %s" % self.price)
            deal = ledger.accepted(device, buyer, bid_id, price, kwh, kw, self.start)
            self.contracts[key] = (deal.contract_id, "Received")
        elif held is None or held[1] != "Received":
            raise Refused("battery %d's contract of slot %s is not Received" % (device, self.name))
        elif state == "Confirmed":
            confirm_id = msg.get("confirm_id")
            if not whole(confirm_id, MAX_ID):
                raise Refused("confirm_id must be a message id below 2^63")
            # The battery's receipt names it and the confirm it answers: an id another
            # contract of this battery holds would take that contract's receipt.
            if store.contract_by_confirm(None, confirm_id, device=device) is not None:
                raise Refused("confirm_id %d is another contract's of battery %d"
                              % (confirm_id, device))  # fmt: skip
            ledger.confirming(held[0], confirm_id)
            self.contracts[key] = (held[0], "Confirmed")
        else:
            ledger.withdrawn(held[0], str(msg.get("why", "by the buyer"))[:100])
            self.contracts[key] = (held[0], "TerminatedByAtn")
        return {"type": "contract_result", "ref": msg.get("ref"), "slot": self.name,
                "device": device, "contract": self.contracts[key][0],
                "state": self.contracts[key][1]}  # fmt: skip
