"""Register maps as the device simulator (simulator/devicesim.py) serves them.

Maps are the firmware's (hardware/registers/*.json), read here as plain JSON;
values go to and from Modbus registers with struct, independently of the
firmware's decoder (firmware/modbus.py), so a test that reads them back checks
both sides.
"""

import json
import struct

from simulator import vm

MAPS_DIR = vm.ROOT / "hardware" / "registers"
FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f"}
# A site's three maps by name (`gridbid device sim --profile NAME`): each shipped map is
# served by at least one, and tests/firmware/test_register_maps.py reads each from the VM.
PROFILES = {
    "sunspec": {
        "meter": "eastron_sdm120",
        "battery": "sunspec_battery_802",
        "inverter": "sunspec_der_704",
    },
    "sma_storage": {  # Sunny Boy Storage / Sunny Island: battery and inverter are unit 3
        "meter": "eastron_sdm630",
        "battery": "sma_storage_battery",
        "inverter": "sma_storage_inverter",
    },
    "kostal_plenticore": {  # the battery through the inverter's SunSpec model 802
        "meter": "eastron_sdm630",
        "battery": "sunspec_battery_802",
        "inverter": "kostal_plenticore_inverter",
    },
}


def load_map(name, maps_dir=MAPS_DIR):
    path = maps_dir / (name if name.endswith(".json") else name + ".json")
    return json.loads(path.read_text())


def map_points(register_map):
    """Register points with the map's defaults applied (derived points left out)."""
    defaults = register_map.get("defaults", {})
    return {
        name: {"scale": 1, "word_order": "big", **defaults, **point}
        for name, point in register_map["points"].items()
        if "derive" not in point
    }


def word_count(point):
    return struct.calcsize(FORMATS[point["type"]]) // 2


def to_registers(raw, point):
    """Registers for a raw (unscaled) value; ValueError when it does not fit the type."""
    fmt = FORMATS[point["type"]]
    try:
        data = struct.pack(fmt, raw if fmt == ">f" else int(round(raw)))
    except (struct.error, OverflowError) as exc:
        raise ValueError("%r does not fit %s" % (raw, point["type"])) from exc
    words = list(struct.unpack(">%dH" % (len(data) // 2), data))
    return words if point["word_order"] == "big" else words[::-1]


def from_registers(words, point):
    if point["word_order"] != "big":
        words = words[::-1]
    return struct.unpack(FORMATS[point["type"]], struct.pack(">%dH" % len(words), *words))[0]
