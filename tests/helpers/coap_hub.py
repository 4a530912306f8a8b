"""A hub for the CoAP tests (tests/hub/integrations/test_coap.py,
tests/firmware/test_coap_vm.py): a real Hub
object with no batteries, its SQLite store, contracts made through its ledger, and its
[coap] integration started as `gridbid hub run` starts it, on a free loopback port."""

import contextlib
import json
import os
import socket
import time

from helpers.hub_site import write_keys
from helpers.logs import said
from hub.config import hub_toml
from hub.service import Hub
from protocol import auth, contract, pairing
from simulator.fleet import free_port

DEVICE, OTHER, BUYER, BUYER2, STRANGER = 1001, 1002, 1, 2, 4242
MASTER = os.urandom(32)  # the hub's: each battery's CoAP key is derived from it
# the CoAP pair keys the hub would give each id (an aggregator id's is no battery's key)
KEYS = {k: pairing.derive(MASTER, pairing.LABEL_COAP, k) for k in (BUYER, BUYER2, DEVICE, OTHER)}
SLOT_S, GATE_S = 900, 300
PRICE = 18.5


def now_ms():
    return time.time_ns() // 1_000_000


def key(key_id):
    return auth.HmacKey(KEYS[key_id])


@contextlib.asynccontextmanager
async def running_hub(tmp_path, name="hub", **settings):
    """A Hub (no batteries) whose [coap] integration serves on a free loopback port."""
    keys = tmp_path / "hub-keys.json"
    write_keys(keys, [BUYER, BUYER2])
    keys.write_text(json.dumps({"master": MASTER.hex(), "group": os.urandom(32).hex()}))
    port = free_port(socket.SOCK_DGRAM)
    cfg = hub_toml.check({
        "hub": {"name": name, "store": "hub.sqlite", "slot_s": SLOT_S, "gate_s": GATE_S},
        "aggregator": [{"key_id": BUYER}, {"key_id": BUYER2}],
        "coap": {"bind": "127.0.0.1", "port": port, **settings},
    }, base=tmp_path)  # fmt: skip
    with said() as logs:
        hub = Hub(cfg)
        await hub.start_integrations()
        hub.coap, hub.port, hub.logs = hub.integrations["coap"], port, logs
        try:
            yield hub
        finally:
            await hub.close()


def bought(hub, device, buyer, bid_id, start, confirm_id=None, outcome=None, kwh=1.0):
    """A contract made as the hub makes it (hub/ledger.py): the battery accepted a bid
    (Received), the BidConfirm left (Confirmed), the battery reported an outcome."""
    deal = hub.ledger.accepted(device, buyer, bid_id, PRICE, kwh, 5.0, start)
    if confirm_id is not None:
        hub.ledger.confirming(deal.contract_id, confirm_id)
    if outcome is not None:
        hub.ledger.reported(device, buyer, confirm_id, outcome, kwh)
    return deal.contract_id


def seed(hub):
    """DEVICE's contracts in each state that matters, and one of OTHER. -> {name: id}"""
    for device in (DEVICE, OTHER):
        hub.store.add_device(device, device, "127.0.0.1")
    nxt = contract.next_slot((SLOT_S, 0, SLOT_S), time.time())
    success = contract.TERM_CONTRACT_SUCCESS
    return {
        "running": bought(hub, DEVICE, BUYER2, 17, nxt - SLOT_S, 5007),  # its slot started
        "confirmed": bought(hub, DEVICE, BUYER, 11, nxt, 5001),
        "later": bought(hub, DEVICE, BUYER2, 12, nxt + SLOT_S, 5002),
        "received": bought(hub, DEVICE, BUYER, 13, nxt + SLOT_S),  # not binding: not listed
        "done": bought(hub, DEVICE, BUYER, 14, nxt - 2 * SLOT_S, 5004, success),
        "old": bought(hub, DEVICE, BUYER, 15, nxt - 10 * SLOT_S, 5005, success),  # > recent_s
        "others": bought(hub, OTHER, BUYER, 16, nxt, 5006),
    }
