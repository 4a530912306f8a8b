"""A hub site for the end-to-end tests: hub.toml and its keys file for a Fleet of
batteries on the VM, and an event loop in a thread for the fleet's processes."""

import asyncio
import json
import os
import threading

SLOT_S, GATE_S = 5, 3
AGGREGATORS = [
    {"key_id": 1, "name": "value", "strategy": "value", "value": 22.0, "spread": 4.0,
     "margin": 1.0, "bidders": 2},
    {"key_id": 2, "name": "adaptive", "strategy": "adaptive", "value": 22.0, "spread": 4.0,
     "margin": 1.0},
]  # fmt: skip


class Background:
    """An event loop in a thread: the fleet's processes and readers live on it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __call__(self, coro, timeout=90):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def start_all(devices):
    await asyncio.gather(*(d.start() for d in devices))


def toml(data):
    """A hub.toml from {"hub": {...}, "aggregator": [{...}, ...]} (values: str or number)."""
    text = ["[hub]"] + ["%s = %s" % (k, json.dumps(v)) for k, v in data.get("hub", {}).items()]
    for agg in data.get("aggregator", []):
        text += ["", "[[aggregator]]"] + ["%s = %s" % (k, json.dumps(v)) for k, v in agg.items()]
    return "\n".join(text) + "\n"


def write_keys(path, aggregators=(), mode=0o600):
    """A hub's keys file at path (fresh master and group keys), and beside it an identity
    file (aggregator-<id>.json, 0600) for each hosted aggregator id."""
    path.touch(mode=mode)
    path.write_text(json.dumps({"master": os.urandom(32).hex(), "group": os.urandom(32).hex()}))
    os.chmod(path, mode)
    for key_id in aggregators:
        identity = path.parent / ("aggregator-%d.json" % key_id)
        identity.touch(mode=0o600)
        identity.write_text(json.dumps({"id": key_id, "name": "agg%d" % key_id,
                                        "master": os.urandom(32).hex()}))  # fmt: skip
    return path


def hub_settings(fleet, **more):
    settings = {
        "name": "hub", "store": "hub.sqlite", "keys_file": "hub-keys.json",
        "group_addr": fleet.group_addr, "group_port": fleet.group_port,
        "interface": "127.0.0.1", "device_port": fleet.tcp_port,
        "slot_s": SLOT_S, "gate_s": GATE_S, "discovery_s": 0.25, "answer_s": 1.0,
        "bind_timeout_s": 0.8,
    }  # fmt: skip
    settings.update(more)
    return {"hub": settings, "aggregator": AGGREGATORS}


def deploy(fleet, folder, **more):
    """hub.toml, its 0600 keys file and its hosted aggregators' identity files (theirs,
    aggregator-<id>.json) in folder, for this fleet. -> (config path, store path)."""
    fleet.hub_keys(folder / "hub-keys.json")
    for agg in AGGREGATORS:
        fleet.identity(folder / ("aggregator-%d.json" % agg["key_id"]), agg["key_id"], agg["name"])
    config = folder / "hub.toml"
    config.write_text(toml(hub_settings(fleet, **more)))
    return config, folder / "hub.sqlite"
