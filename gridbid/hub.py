"""`gridbid hub run|keys`: the market maker service (hub/service.py), and its keys file."""

import asyncio
import sys
from pathlib import Path

from hub.config import hub_toml, keys_file


def governed(cfg):
    """cfg with the slot length governance moved the grid on to (hub/controls.py), for the
    batteries' configs: one provisioned now must trade the slots the hub trades."""
    from hub import controls
    from hub.store import Store

    if not Path(cfg["store"]).is_file():
        return cfg
    with Store(cfg["store"]) as store:
        grid = store.controls().get(controls.GRID)
    return dict(cfg, slot_s=grid[2]) if grid else cfg


def add_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="start the hub", description="start the hub")
    run.add_argument("--config", required=True, help="hub.toml (see hub/hub.example.toml)")
    run.add_argument("--slots", type=int, default=None, help="stop after N slots")
    keys = actions.add_parser(
        "keys", help="make or extend its keys file, and the batteries' configs",
        description="Make the hub's keys file (hub.toml's keys_file, mode 0600) or add what "
        "hub.toml now names: a key per aggregator, the group key, a key per --battery, and "
        "each battery's battery-<id>.json (its config.json: its own settings, its keys, the "
        "hub's slot grid and ports). Safe to re-run: keys already made and the batteries' "
        "own settings are kept. No key is ever printed.",
    )  # fmt: skip
    keys.add_argument("--config", required=True, help="hub.toml (see hub/hub.example.toml)")
    keys.add_argument(
        "--battery", type=int, action="append", default=[], metavar="DEVICE_ID",
        help="add a key for this battery and write battery-<id>.json (repeatable)",
    )  # fmt: skip
    keys.add_argument("--out", help="folder for battery-<id>.json (default: the keys file's)")
    keys.add_argument(
        "--template", metavar="CONFIG_JSON",
        help="a new battery-<id>.json starts from this battery config (its devices; "
        "e.g. firmware/config.example.json); an existing one keeps its own settings",
    )  # fmt: skip


def run(args):
    try:
        if args.action == "keys":
            return keys(args)
        cfg = hub_toml.load(args.config)
    except (hub_toml.ConfigError, keys_file.KeysError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    from hub.service import Hub, StartError

    async def main():
        hub = Hub(cfg)
        try:
            await hub.run(args.slots)
        finally:
            await hub.close()

    try:
        asyncio.run(main())
    except StartError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hub stopped", flush=True)
    return 0


def keys(args):
    cfg = hub_toml.load(args.config, keys=False)
    bad = [b for b in args.battery if not 0 < b < 2**32]
    if bad:  # a device id is its key id in frame headers: u32
        raise hub_toml.ConfigError("battery ids are 1..2^32-1, not %s" % bad)
    for line in keys_file.provision(governed(cfg), args.battery, args.out, args.template):
        print(line, flush=True)
    return 0
