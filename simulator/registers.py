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
    "sunspec_hybrid": {  # a SunSpec three-phase hybrid: inverter 103 with storage 124
        "meter": "eastron_sdm630",
        "battery": "sunspec_battery_802",
        "inverter": "sunspec_inverter_103_124",
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


def map_points(register_map, starts=None):
    """Register points with the map's defaults applied (derived points left out); a
    SunSpec map's points get their address from starts (model id -> its start)."""
    defaults = register_map.get("defaults", {})
    points = {
        name: {"scale": 1, "word_order": "big", **defaults, **point}
        for name, point in register_map["points"].items()
        if "derive" not in point
    }
    for point in points.values():
        if "model" in point:
            point["address"] = starts[point["model"]] + point["offset"]
    return points


COMMON = (1, 66)  # SunSpec common model: ID, L (Mn, Md, Opt, Vr, SN strings, DA)
SUNS = [0x5375, 0x6E53]


def text_registers(text, count):
    """A SunSpec string point: two characters a register, NUL-padded."""
    data = text.encode()[: 2 * count].ljust(2 * count, b"\0")
    return list(struct.unpack(">%dH" % count, data))


def sunspec_layout(register_map, base=40000, order=None, ids=None, lengths=None, filler=0,
                   end=True):  # fmt: skip
    """How a simulated SunSpec device lays out a map's models: the common model then the
    map's models at base (order: model ids, the common model's 1 among them), or as a
    wrong or broken device would: ids {model: id served instead}, lengths {model: its
    length instead; the layout follows it, and one past register 65535 is served as it
    is, with no end after it}, filler empty models (id 64000) before the end, end=False:
    no end marker. -> (starts {model: start}, [(address, registers)], [block start, count])."""
    models = [COMMON] + [tuple(m[:2]) for m in register_map["sunspec"]]
    if order:
        models.sort(key=lambda m: order.index(m[0]))
    strings = text_registers("gridbid", 16) + text_registers("simulator", 16)  # Mn, Md
    starts, words, address = {}, [(base, SUNS)], base + 2
    for model, length in models + [(64000, 0)] * filler:
        starts.setdefault(model, address)
        length = (lengths or {}).get(model, length)
        words.append((address, [(ids or {}).get(model, model), length]))
        if model == 1:
            words.append((address + 2, strings))
        address += 2 + length
    if end and address < 0xFFFF:
        words.append((address, [0xFFFF, 0]))
    return starts, words, [base, min(address + (2 if end else 0), 0x10000) - base]


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
