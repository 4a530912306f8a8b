"""[mqtt]: the hub's events on an MQTT broker, and operators' commands from it.

Which broker: none by default. The demo (`./dev.sh demo`, simulator/demo.py) runs with no
[mqtt] section, so it needs no server besides itself: a demo must start anywhere in
one command, and a market that waited on a broker would stop trading when the broker
stops. `gridbid hub run` with an [mqtt] section needs a broker; deploy/mosquitto/ is
the one to run (mosquitto 2.0: TLS, passwords, ACL), and the tests run against it.

Topic tree, <base> = <topic_prefix>/<hub> (topic_prefix "gridbid", hub = [hub] name).
Every payload is the event as JSON (hub/events.py) with its "id": QoS 1 (the `qos`
setting) delivers at least once, so a consumer drops an id it has already seen. Events
go out in the order the hub emitted them, across reconnects and restarts.

    topic                               retained  what
    <base>/status                       yes       "online" / "offline" (the Last Will)
    <base>/device/<id>/status           yes       the battery's last device or failure event
    <base>/device/<id>/telemetry        yes       its last telemetry event
    <base>/price                        yes       the last price signal (price event)
    <base>/market/clearing              yes       the last auction's result (clearing event)
    <base>/market/offer, market/bid     no        every offer (ask) and bid layer
    <base>/contract                     no        every contract state (contract event)
    <base>/settlement                   no        every settlement batch's status
    <base>/control/<name>               yes       an operator setting's last change
    <base>/disk                         yes       the store against its budget (disk event)
    <base>/device/<id>/contract         yes       is a contract running now, at what kW
    <base>/device/<id>/earnings         yes       what its final contracts pay its owner
    <base>/cmd                          -         commands in (below)
    <base>/reply                        no        commands' replies
    <discovery_prefix>/{sensor,binary_sensor}/gridbid_<hub>_<device>_<key>/config
                                        yes       Home Assistant MQTT discovery

The entities, and the two battery states (contract, earnings), are home_assistant.py's:
those two are published when they change and at each connect, not through the outbox
(a retained state needs only its last value).

Commands: a JSON object on <base>/cmd, {"id": REQUEST ID, "name": CONTROL, "value": V}
sets an operator's control (Hub.set_control, by "mqtt"): "reserve_floor.<device>" (c/kWh,
null clears it) or "paused.<aggregator>" (true/false). The reply on <base>/reply is
{"id": REQUEST ID, "ok": true, "name": ..., "value": ...} or {"id": ..., "ok": false,
"error": TEXT}; a MQTT v5 command's CorrelationData comes back on the reply. A command
delivered twice (same bytes) is answered again and applied once. Commands sent while the
hub is offline are not kept (a late floor or pause could do harm): the sender sees no
reply and decides.

Store-and-forward: each event is written to the outbox (hub/integrations/mqtt/outbox.py) first, and
deleted only on the broker's PUBACK; at most `window` events are in flight, and the
rest wait on disk, so a broker away for hours costs disk, not memory. A refused event
(PUBACK >= 0x80, e.g. 0x87 when the ACL forbids its topic) moves to the outbox's
`refused` table, logged once per topic. paho's network loop runs in its own thread
(loop_start); its callbacks hand over to the hub's event loop (call_soon_threadsafe),
which alone touches the outbox and the hub.
"""

import asyncio
import collections
import json
import logging
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.integrations.mqtt.home_assistant import FINAL_STATES, TICK_S, States, discovery
from hub.integrations.mqtt.outbox import Outbox, level, route
from hub.integrations.mqtt.settings import OUTBOX_NAME, credentials

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 2.0  # close(): how long the last PUBACKs may take (unacked: sent next run)


class Bridge:
    def __init__(self, hub, settings):
        self.hub, self.settings = hub, settings
        self.loop = asyncio.get_running_loop()
        self.name = level(hub.cfg["name"])
        self.base = "%s/%s" % (settings["topic_prefix"], self.name)
        self.qos = settings["qos"]
        self.where = "%s:%d" % (settings["host"], settings["port"])
        login = credentials(settings["credentials_file"]) if settings["credentials_file"] else None
        path = settings["outbox"] or str(Path(hub.cfg["store"]).parent / OUTBOX_NAME)
        self.outbox = Outbox(path)
        self.handed = {}  # paho mid -> outbox seq: events sent, PUBACK not in yet
        self.others = {}  # paho mid -> topic: status, discovery, replies (not in the outbox)
        self.last = 0  # the last seq handed to paho
        self.cap = settings["window"]
        self.online = self.closing = self.closed = False
        self.resync = False  # reconnected: paho re-sends what it held before anything new
        self.acked, self.flushing = [], False
        self.discovered = set()  # devices whose discovery went out on this connection
        self.replies = collections.OrderedDict()  # command -> reply (a command sent twice)
        self.said = None  # the connection state last logged: each change is said once
        self.refused_topics = set()
        self.client = self._client(login)
        self.states = States(
            hub.store,
            self.base,
            settings["currency"],
            lambda topic, payload: self._publish(topic, payload, retain=True),
        )
        self.ticker = self.loop.create_task(self._tick())
        self.unsubscribe = hub.events.subscribe(self.on_event)
        self.client.connect_async(settings["host"], settings["port"], settings["keepalive"],
                                  clean_start=True)  # fmt: skip
        self.client.loop_start()
        backlog = self.outbox.count()
        log.info("mqtt: bridge to %s%s as %s, topics %s/...%s" % (
            self.where, " (TLS)" if settings["tls_ca"] else "", login[0] if login else
            "anonymous", self.base, "; %d events from before wait in the outbox" % backlog
            if backlog else ""))  # fmt: skip

    def _client(self, login):
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=s["client_id"] or "gridbid-%s" % self.name)  # fmt: skip
        client.max_inflight_messages_set(s["window"])
        client.reconnect_delay_set(s["reconnect_min_s"], s["reconnect_max_s"])
        client.will_set(self.base + "/status", "offline", self.qos, retain=True)
        if s["tls_ca"]:  # the broker's name is checked against its certificate
            client.tls_set(ca_certs=s["tls_ca"], certfile=s["tls_cert"], keyfile=s["tls_key"])
        if login:
            client.username_pw_set(*login)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # --- events in (the hub's event loop) -------------------------------------------

    def on_event(self, event):
        topic, retain = route(self.base, event)
        payload = json.dumps(event, separators=(",", ":"), default=str)
        self.outbox.add(event["id"], topic, payload, retain)  # first: a crash loses nothing
        if event["kind"] == "device":
            self.discover(event["device"])
            if self.online and not self.closing:  # a new battery: its states, once
                self.states.earnings(event["device"])
                self.states.tick(time.time(), [event["device"]])
        elif event["kind"] == "contract" and event["state"] in FINAL_STATES:
            if self.online and not self.closing:  # it pays, and may have ended early
                self.states.ended(event["device"], time.time())
        self.feed()

    async def _tick(self):
        """ "In contract" of every battery, every TICK_S (contracts start and end with no
        event); a failure (the store busy) is said once and tried again next tick."""
        failing = False
        while True:
            await asyncio.sleep(TICK_S)
            if self.online and not self.closing:
                try:
                    self.states.tick(time.time())
                    failing = False
                except Exception as exc:
                    if not failing:
                        log.warning("mqtt: cannot read the running contracts: %r" % exc)
                    failing = True

    def feed(self):
        """Hand paho the next events from the outbox, up to the window, in order."""
        if not self.online or self.closing:
            return
        if self.resync:
            if self.handed:  # paho re-sends these first: anything new would overtake them
                return
            self.resync = False
        room = self.cap - len(self.handed)
        if room <= 0:
            return
        for seq, topic, payload, retain in self.outbox.after(self.last, room):
            try:
                info = self.client.publish(topic, payload, self.qos, bool(retain))
            except ValueError as exc:  # paho refuses it (e.g. too large): sending again won't help
                self._refused(seq, topic, "paho: %s" % exc)
            else:
                self.handed[info.mid] = seq
            self.last = seq

    # --- paho's callbacks (its network thread): hand over to the event loop -------

    def _soon(self, fn, *args):
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: the hub is gone, the outbox stays
            pass

    def _on_connect(self, client, _userdata, _flags, reason, properties):
        if reason.is_failure:
            self._soon(self._say, "refused", "the broker at %s refused the connection: %s "
                       "(0x%02x): check credentials_file and the broker's password file"
                       % (self.where, reason, reason.value))  # fmt: skip
            return
        # Before paho re-sends what it held (right after this returns): online comes first.
        info = client.publish(self.base + "/status", "online", self.qos, retain=True)
        self._soon(self.others.__setitem__, info.mid, self.base + "/status")
        client.subscribe(self.base + "/cmd", qos=1)
        self._soon(self._connected, getattr(properties, "ReceiveMaximum", 65535))

    def _on_connect_fail(self, _client, _userdata):
        error = sys.exc_info()[1]  # paho calls this from its `except OSError` block
        self._soon(self._say, "unreachable", "cannot connect to the broker at %s: %s"
                   % (self.where, error or "connection failed"))  # fmt: skip

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties):
        self._soon(self._disconnected, str(reason))

    def _on_publish(self, _client, _userdata, mid, reason, _properties):
        self._soon(self._acked, mid, reason.value, str(reason))

    def _on_message(self, _client, _userdata, msg):
        correlation = getattr(msg.properties, "CorrelationData", None)
        self._soon(self._command, msg.payload, correlation)

    # --- the same, on the event loop ----------------------------------------------

    def _say(self, state, text):
        """Log a connection state once, not at every retry."""
        if self.closed or self.said == (state, text):
            return
        self.said = (state, text)
        log.warning(
            "mqtt: %s; retrying, %d events wait in the outbox" % (text, self.outbox.count())
        )

    def _connected(self, receive_max):
        if self.closed:
            return
        self.online = True
        self.cap = min(self.settings["window"], receive_max)
        self.said = ("connected", None)
        log.info("mqtt: connected to %s; %d events to send" % (self.where, self.outbox.count()))
        devices = {row["id"] for row in self.hub.store.devices()} | set(self.hub.registry.devices)
        self.discovered.clear()
        for device in sorted(devices):
            self.discover(device)
        self.states.resend(sorted(devices), time.time())
        self.feed()

    def _disconnected(self, reason):
        if self.closed:
            return
        if self.online and not self.closing:
            self.said = ("lost", reason)
            log.warning("mqtt: lost the broker at %s (%s); events wait in the outbox"
                     % (self.where, reason))  # fmt: skip
        self.online = False
        self.resync = True

    def _acked(self, mid, code, text):
        if self.closed:
            return
        seq = self.handed.pop(mid, None)
        if seq is None:
            topic = self.others.pop(mid, None)
            if code >= 0x80 and topic is not None:
                self._refused(None, topic, "%s (0x%02x)" % (text, code))
        elif code >= 0x80:
            self._refused(seq, None, "%s (0x%02x)" % (text, code))
        else:
            self.acked.append(seq)
            if not self.flushing:  # one delete per loop pass, not per PUBACK
                self.flushing = True
                self.loop.call_soon(self._flush)
        self.feed()

    def _flush(self):
        self.flushing = False
        if self.acked and not self.closed:
            self.outbox.done(self.acked)
            self.acked = []

    def _refused(self, seq, topic, reason):
        if seq is not None:
            topic = self.outbox.refuse(seq, reason)
        if topic not in self.refused_topics:  # said once per topic: no log flood, no retry
            self.refused_topics.add(topic)
            log.warning("mqtt: the broker refused a message on %s: %s; %s" % (
                topic, reason, "kept in the outbox's refused table, not sent again"
                if seq is not None else "check the broker's ACL"))  # fmt: skip

    def _publish(self, topic, payload, retain=False, properties=None):
        """A message outside the outbox (status, discovery, replies), QoS as set."""
        info = self.client.publish(topic, payload, self.qos, retain, properties)
        self.others[info.mid] = topic

    # --- Home Assistant discovery ---------------------------------------------------

    def discover(self, device):
        prefix = self.settings["discovery_prefix"]
        if not prefix or not self.online or device in self.discovered:
            return  # offline: _connected() sends it for every known device
        self.discovered.add(device)
        page = getattr(self.hub.integrations.get("web"), "url", None)
        found = discovery(self.base, prefix, self.name, device, self.settings["currency"], page)
        for topic, config in found:
            self._publish(topic, json.dumps(config), retain=True)

    # --- commands -------------------------------------------------------------------

    def _command(self, payload, correlation):
        if self.closed:
            return
        key = bytes(payload)
        reply = self.replies.get(key)  # the same command again (QoS 1): the same answer
        if reply is None:
            request, name, value, error = parse_command(payload)
            if error is None:
                try:
                    self.hub.set_control(name, value, by="mqtt")
                except ValueError as exc:  # the hub's own check: no such battery, bad value
                    error = str(exc)
                except Exception as exc:  # e.g. the store: still an answer, and a log line
                    log.warning("mqtt: command %r failed: %r" % (name, exc))
                    error = "the hub could not set it: %s" % exc
            reply = {"id": request, "ok": True, "name": name, "value": value}
            if error is not None:
                reply = {"id": request, "ok": False, "error": error}
            self.replies[key] = reply
            while len(self.replies) > 256:
                self.replies.popitem(last=False)
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self._publish(self.base + "/reply", json.dumps(reply), properties=properties)

    # --- closing --------------------------------------------------------------------

    async def close(self):
        """Say offline, wait a moment for the last PUBACKs, stop; what is not acked
        stays in the outbox for the next start."""
        self.unsubscribe()
        self.closing = True
        self.ticker.cancel()
        if self.online:
            self._publish(self.base + "/status", "offline", retain=True)
            deadline = self.loop.time() + CLOSE_WAIT_S
            while (self.handed or self.others) and self.loop.time() < deadline:
                await asyncio.sleep(0.01)
        self.client.disconnect()  # a clean disconnect: the broker does not send the Will
        await asyncio.to_thread(self.client.loop_stop)
        self._flush()
        self.closed = True
        self.outbox.close()
        log.info("mqtt: bridge closed")


def parse_command(payload):
    """-> (request id, control name, value, error): error None, or what is wrong (the
    request id is None when it could not be read)."""
    try:
        data = json.loads(payload)
    except ValueError as exc:  # UnicodeDecodeError is one too
        return None, None, None, "a command is JSON: %s" % exc
    if not isinstance(data, dict):
        return None, None, None, 'a command is a JSON object {"id", "name", "value"}'
    request, name = data.get("id"), data.get("name")
    if isinstance(request, bool) or not isinstance(request, (str, int)) or not (
        0 < len(str(request)) <= 64
    ):  # fmt: skip
        return None, None, None, "a command needs an id (a request id, up to 64 characters)"
    unknown = sorted(set(data) - {"id", "name", "value"})
    if unknown:
        return request, name, None, "unknown fields %s" % unknown
    if not isinstance(name, str):
        return request, name, None, "name: reserve_floor.<device> or paused.<aggregator>"
    if "value" not in data:
        return request, name, None, "value is required (null clears the control)"
    return request, name, data["value"], None
