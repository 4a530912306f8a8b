"""A real mosquitto for tests (tests/hub/integrations/test_mqtt_bridge.py):
deploy/mosquitto's own config
on free loopback ports, and a paho subscriber reading in its own thread."""

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers.waiting import until
from simulator import vm
from simulator.fleet import free_port

DEPLOY = vm.ROOT / "deploy" / "mosquitto"
USERS = ("gridbid-hub", "homeassistant", "operator")


class Broker:
    """deploy/mosquitto/mosquitto.conf on two free loopback ports (plain, TLS)."""

    def __init__(self, folder, certs):
        self.folder = Path(folder)
        self.port, self.tls_port = free_port(), free_port()
        conf = (DEPLOY / "mosquitto.conf").read_text()
        for old, new in (
            (r"^listener 1883 127\.0\.0\.1$", "listener %d 127.0.0.1" % self.port),
            (r"^listener 8883$", "listener %d 127.0.0.1" % self.tls_port),
            (r"/etc/mosquitto/", "%s/" % self.folder),
            (r"/var/lib/mosquitto/", "%s/data/" % self.folder),
        ):  # fmt: skip
            conf, n = re.subn(old, new, conf, flags=re.M)
            assert n, "deploy/mosquitto/mosquitto.conf no longer has %r" % old
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text(conf)
        (self.folder / "data").mkdir()
        shutil.copytree(certs, self.folder / "certs")
        shutil.copy(DEPLOY / "gridbid.acl", self.folder / "gridbid.acl")
        self.passwords = {user: secrets.token_urlsafe(16) for user in USERS}
        passwd = self.folder / "gridbid.passwd"
        passwd.touch(mode=0o600)
        for user, password in self.passwords.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
        if os.geteuid() == 0:  # as root mosquitto drops to user mosquitto, then reads these
            user = pwd.getpwnam("mosquitto")
            for path in [self.folder, *self.folder.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.process = None
        self.log = self.folder / "mosquitto.log"

    def start(self):
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=out,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        for port in (self.port, self.tls_port):
            until(lambda p=port: self._accepts(p), 5, "mosquitto on port %d" % port)

    def _accepts(self, port):
        assert self.process.poll() is None, "mosquitto stopped:\n" + self.log.read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def save(self):
        """SIGUSR1: mosquitto writes its persistence file (sessions, retained messages)."""
        db = self.folder / "data" / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        self.process.send_signal(signal.SIGUSR1)
        until(lambda: db.exists() and db.stat().st_mtime_ns != before, 5, "mosquitto.db")

    def kill(self):
        self.process.kill()
        self.process.wait(5)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


class Subscriber:
    """A paho client reading topics at QoS 1 in its own thread: [(topic, payload, retain)]."""

    def __init__(self, broker, topics=("gridbid/#",), user="operator", persistent=False,
                 client_id=None):  # fmt: skip
        self.messages, self.properties = [], []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=client_id or "sub-" + secrets.token_hex(4))  # fmt: skip
        self.client.username_pw_set(user, broker.passwords[user])
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._message
        props = Properties(PacketTypes.CONNECT)
        if persistent:  # the broker keeps its subscription and queue while it is away
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", broker.port, clean_start=not persistent,
                            properties=props)  # fmt: skip
        self.client.loop_start()
        assert self.subscribed.wait(5), "the subscriber was not subscribed"

    def _message(self, _client, _userdata, msg):
        self.messages.append((msg.topic, msg.payload, msg.retain))
        self.properties.append(msg.properties)

    def events(self, prefix="gridbid/hub1/"):
        """[(topic, event)] of the hub's events received (JSON with a "kind"), in order."""
        found = [(t, json.loads(p)) for t, p, _r in list(self.messages)
                 if t.startswith(prefix) and p.startswith(b"{")]  # fmt: skip
        return [(t, e) for t, e in found if "kind" in e]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


# --- hubs -------------------------------------------------------------------------------
