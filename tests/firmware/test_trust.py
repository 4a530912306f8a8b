"""Enrollment and revocation while the battery runs (node.follow_trust): config.json's
"keys" are followed, checked whole before any is used — on CPython and the VM.
(test_firmware_integration.py runs the same against aggregators over TCP.)"""

import asyncio
import json
import os

import node as nodes
from checks import TempDir

from protocol import auth, frame, message

OWN = 1001
HUB = 0  # the market maker's key id (config hub_id)
KEYS = {"1": "11" * 32, "2": "22" * 32}


class Writer:
    """A TCP stream's writing end, as node.close() uses it."""

    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass


def write(path, keys, extra=""):
    """config.json rewritten as the owner's tools do: a temporary file renamed over it."""
    with open(path + ".tmp", "w") as f:
        f.write(extra or json.dumps({"device_id": OWN, "key_id": OWN, "keys": keys}))
    os.rename(path + ".tmp", path)


def stamp(path):
    found = os.stat(path)
    return (found[1], found[6], found[8])  # as config.load records it


def test_the_keys_follow_config_json_and_a_bad_change_changes_nothing():
    lines = []
    keyring = auth.Keyring({int(k): bytes([int(k)]) * 32 for k in KEYS}, group=b"g" * 32)
    keyring.add(HUB, b"\x99" * 32)  # the market maker's (hub_key): not an aggregator's
    with TempDir() as folder:
        path = folder + "/config.json"
        write(path, KEYS)
        cfg = {"device_id": OWN, "key_id": OWN, "hub_id": HUB, "stamp": stamp(path)}
        node = nodes.Node(cfg, None, None, None, frame.Codec(keyring, key_id=OWN), None,
                          lines.append)  # fmt: skip
        sessions = {}
        for name, peer in ((1, 1), (2, 2), ("2b", 2), (None, None)):  # 2 has two sessions;
            session = nodes.Session(node.codec, Writer())  # one has not authenticated yet
            session.peer = peer
            node.sessions.append(session)
            sessions[name] = session
        real_sleep = asyncio.sleep

        async def fast_sleep(seconds):
            await real_sleep(0)

        async def until(text):
            """Let follow_trust run until it logs text; -> that line."""
            for _ in range(200):
                for line in lines:
                    if text in line:
                        lines.remove(line)
                        return line
                await real_sleep(0)
            raise AssertionError("never logged %r: %s" % (text, lines))

        async def scenario():
            asyncio.sleep = fast_sleep
            task = asyncio.create_task(node.follow_trust(path))
            try:
                for _ in range(5):
                    await real_sleep(0)
                assert not lines and "stamp" not in cfg  # unchanged: nothing reloaded

                # Revocation: aggregator 2's key leaves, and its session is closed.
                write(path, {"1": KEYS["1"]})
                await until("aggregator 2 is no longer trusted")
                assert sorted(keyring) == [HUB, 1] and 1 in keyring  # the hub's key stays
                for name in (2, "2b"):
                    assert sessions[name].writer.closed and sessions[name] not in node.sessions
                assert not sessions[1].writer.closed and not sessions[None].writer.closed
                # A task that still holds a closed session (status() iterates a copy of
                # the list) sends nothing there, and nothing is raised: no key seals it.
                await node.send(sessions[2], message.query(1, OWN))
                assert not lines
                assert keyring.get(1).tag(b"x") == auth.HmacKey(b"\x11" * 32).tag(b"x")

                # Changes that are not a list of good pair keys change nothing at all.
                for keys, extra in (
                    ({"1": KEYS["1"], "3": "33" * 8}, ""),  # a key too short
                    ({"3": "33" * 32, str(OWN): "44" * 32}, ""),  # the old scheme's own key
                    ({"1": KEYS["1"], str(HUB): "44" * 32}, ""),  # posing as the hub
                    ({"3": "zz"}, ""),
                    ({"x": "33" * 32}, ""),
                    ({"1": KEYS["1"], "3": "33" * 32}, '{"keys": {"3": "33'),  # torn
                    (None, '{"device_id": 1001}'),  # no keys
                ):
                    write(path, keys, extra)
                    line = await until("keys not reloaded")
                    assert sorted(keyring) == [HUB, 1], line
                    assert "33" * 8 not in line and "44" * 32 not in line  # no key logged
                assert not lines, lines  # neither trusted nor revoked anyone

                # Enrollment: aggregator 3 is trusted, 1's session goes on.
                write(path, {"1": KEYS["1"], "3": "33" * 32})
                await until("aggregator 3 is trusted")
                assert sorted(keyring) == [HUB, 1, 3] and not lines
                assert keyring.get(3).tag(b"x") == auth.HmacKey(b"\x33" * 32).tag(b"x")
                assert sessions[1] in node.sessions and not sessions[1].writer.closed
                assert not task.done()  # it follows on after every change, good or bad
            finally:
                asyncio.sleep = real_sleep
                task.cancel()

        asyncio.run(scenario())
