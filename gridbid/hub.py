"""`gridbid hub run|keys`: the market maker service (hub/service.py), and its keys file."""

import asyncio
from pathlib import Path

from hub import controls
from hub.config import hub_toml, keys_file
from hub.service import Hub, StartError
from hub.store import Store


def governed(cfg):
    """cfg with the slot length governance moved the grid on to (hub/controls.py), for the
    batteries' configs: one provisioned now must trade the slots the hub trades."""
    if not Path(cfg["store"]).is_file():
        return cfg
    with Store(cfg["store"]) as store:
        grid = store.controls().get(controls.GRID)
    return dict(cfg, slot_s=grid[2]) if grid else cfg


def add_arguments(parser):
    parser.add_argument(
        "action", choices=("run", "keys"),
        help="run: start the hub; keys: make or extend its keys file (hub/config/keys_file.py)",
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="hub.toml (see hub/hub.example.toml)")
    parser.add_argument("--slots", type=int, default=None, help="run: stop after N slots")
    parser.add_argument(
        "--battery", type=int, action="append", default=[], metavar="DEVICE_ID",
        help="keys: add a key for this battery and write battery-<id>.json (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--out", help="keys: folder for battery-<id>.json (default: the keys file's)"
    )
    parser.add_argument(
        "--template", metavar="CONFIG_JSON",
        help="keys: battery-<id>.json completes this battery config (its devices; "
        "e.g. firmware/config.example.json)",
    )  # fmt: skip


def run(args):
    try:
        cfg = hub_toml.load(args.config, keys=args.action == "run")
        if args.action == "keys":
            bad = [b for b in args.battery if not 0 < b < 2**32]
            if bad:  # a device id is its key id in frame headers: u32
                raise hub_toml.ConfigError("battery ids are 1..2^32-1, not %s" % bad)
            for line in keys_file.provision(governed(cfg), args.battery, args.out,
                                            args.template):  # fmt: skip
                print(line, flush=True)
            return 0
    except (hub_toml.ConfigError, keys_file.KeysError) as exc:
        print("error: %s" % exc, flush=True)
        return 2

    async def main():
        hub = Hub(cfg)
        try:
            await hub.run(args.slots)
        finally:
            await hub.close()

    try:
        asyncio.run(main())
    except StartError as exc:
        print("error: %s" % exc, flush=True)
        return 2
    except KeyboardInterrupt:
        print("hub stopped", flush=True)
    return 0
