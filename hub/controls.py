"""Operators' controls: settings an operator changes while the hub runs (MQTT commands,
the web page) and market parameters a passed governance proposal sets
(hub/integrations/platform/gov.py writes them from its own process). Kept in the store
with their history (schema v4); the newest of each name is in force. Controls is their
one owner in the hub.

    reserve_floor.<device id>   c/kWh: that battery's asks are at least this
    paused.<aggregator name>    true: the aggregator bids no more until false
    admitted.<aggregator id>    its name: an independent aggregator may trade here
                                (`gridbid hub admit`)
    revoked.<aggregator id>     true: refused from then on (`gridbid hub revoke`)
    market.<param>              p_balance, p_con, k: the price signal's, from the next
                                slot on; slot_s: from a boundary the hub schedules
    market.slot_grid            the hub's schedule of a governed slot_s: [before s,
                                from unix s, after s] (hub/market/grid.py)
"""

GRID = "market.slot_grid"
SIGNAL_PARAMS = ("p_balance", "p_con", "k")


def floor_name(device_id):
    return "reserve_floor.%d" % device_id


def pause_name(aggregator_name):
    return "paused.%s" % aggregator_name


def admitted_name(key_id):
    return "admitted.%d" % key_id


def revoked_name(key_id):
    return "revoked.%d" % key_id


class Controls:
    def __init__(self, store, events):
        self.store, self.events = store, events
        self.values = store.controls()  # name -> value in force

    def get(self, name, default=None):
        return self.values.get(name, default)

    def floor(self, device_id):
        """The owner's floor under this battery's asks, c/kWh (0: none)."""
        return self.values.get(floor_name(device_id), 0.0)

    def paused(self, aggregator_name):
        return bool(self.values.get(pause_name(aggregator_name)))

    def revoked(self, key_id):
        return bool(self.values.get(revoked_name(key_id)))

    def admitted(self):
        """{key id: name} of every aggregator ever admitted (revoked ones too: their
        past bids keep their names)."""
        found = {}
        for name, value in self.values.items():
            kind, _, key_id = name.partition(".")
            if kind == "admitted" and key_id.isdigit():
                found[int(key_id)] = value
        return found

    def admit(self, key_id, name, by):
        self.record(admitted_name(key_id), name, by)
        self.record(revoked_name(key_id), None, by)

    def revoke(self, key_id, by):
        self.record(revoked_name(key_id), True, by)

    def refresh(self):
        """Re-read them: other processes (`gridbid gov`) write them too."""
        self.values = self.store.controls()

    def set(self, name, value, by, devices, aggregators):
        """An operator's setting (None clears it); ValueError names a bad one. devices
        and aggregators: the batteries and aggregator names it may name."""
        kind, _, target = name.partition(".")
        if kind == "reserve_floor":
            if not (target.isascii() and target.isdigit()) or int(target) not in devices:
                raise ValueError("no battery %r" % target)
            if name != floor_name(int(target)):  # what is listed is the name applied
                raise ValueError("write it %s" % floor_name(int(target)))
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))
                                      or not 0 <= value < 1000):  # fmt: skip
                raise ValueError("a reserve floor is c/kWh, 0..1000, or null to clear it")
        elif kind == "paused":
            if target not in aggregators:
                raise ValueError("no aggregator %r" % target)
            if value is not None and not isinstance(value, bool):
                raise ValueError("paused is true or false")
        else:
            raise ValueError("unknown control %r (reserve_floor.<device>, paused.<aggregator>)"
                             % name)  # fmt: skip
        self.record(name, value, by)

    def record(self, name, value, by):
        """Kept in the store, in force, and told (an event)."""
        self.store.set_control(name, value, by)
        self.refresh()
        self.events.emit("control", name=name, value=value, by=by)
