"""The hub's events: what happened, in order, for whoever listens (the MQTT bridge, the
web page's WebSocket, CoAP's observable /price).

An event is a flat dict, emitted after what it reports is in the store:

    {"id": "<boot ms>.<seq>", "kind": KIND, "at": unix s, ...fields of its kind}

The id is unique across hub restarts (the boot time is in it) and grows within one
run, so a consumer can drop a QoS-1 duplicate. Kinds and their fields:

    device      device, address                          a battery joined (first answer)
    telemetry   device, soc, remaining_kwh, voltage, power_kw, health, charged_kwh,
                discharged_kwh (the battery's energy meters so far: hub/store/telemetry.py)
    failure     device, cause, aggregator                a DeviceFailure reached an agent
    offer       slot, device, kwh, reserve               an ask in a slot's book
    bid         slot, aggregator, device, price, kwh     a bid layer
    price       slot, price, demand, supply              the price signal, recorded
    clearing    slot, price, volume_kwh, reserve, offers, bid_layers, trades
    contract    contract, device, buyer, slot, start, state, price, kwh, delivered_kwh
                                                         every state it reaches
    settlement  batch, status, signature, trades         a batch's chain status
    control     name, value                              an operator's setting changed
    disk        used_mb, budget_mb, share                the store against its budget
                                                         (hub/disk.py: each check, when set)

A listener is called synchronously from the hub's event loop: it must be quick
(queue the event, do not block). One that raises is logged and kept.
"""

import itertools
import logging
import time

log = logging.getLogger(__name__)

KINDS = (
    "device", "telemetry", "failure", "offer", "bid", "price", "clearing", "contract",
    "settlement", "control", "disk",
)  # fmt: skip


RESERVED = {"id", "kind", "at"}


class Events:
    def __init__(self):
        self._listeners = []
        self._boot = int(time.time() * 1000)
        self._seq = itertools.count(1)

    def subscribe(self, listener):
        """listener(event) for every event from now on; -> a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, kind, **fields):
        if kind not in KINDS:
            raise ValueError("unknown event kind %r" % kind)
        if RESERVED & fields.keys():
            raise ValueError(
                "event fields %s are the envelope's" % sorted(RESERVED & fields.keys())
            )
        event = {"id": "%d.%d" % (self._boot, next(self._seq)), "kind": kind,
                 "at": time.time(), **fields}  # fmt: skip
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # one broken listener must not stop the market
                log.error("event listener %r failed on %s: %r", listener, kind, exc)
        return event
