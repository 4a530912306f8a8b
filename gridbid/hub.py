"""`gridbid hub run|keys|admit|revoke`: the market maker service (hub/service.py), its
keys file, and who may trade in its market.

    gridbid hub admit --config hub.toml --aggregator 2 --name acme [--host H] --out F
        the admission file (0600) an independent aggregator trades with: the market's
        name, address and port, and the aggregator's market key (the hub derives it
        from its master secret; it moves to the aggregator out of band)
    gridbid hub revoke --config hub.toml --aggregator 2
        refused from now on: a running hub reads it within a second; contracts already
        made run to their end
"""

import asyncio
import logging
import sys
from pathlib import Path

from gridbid import hub_copies
from hub.config import hub_toml, keys_file
from transport import tasks

log = logging.getLogger(__name__)


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
        description="Make the hub's keys file (hub.toml's keys_file, mode 0600: the hub's "
        "master secret and the group key), an identity file for each aggregator hub.toml "
        "hosts that has none yet (the aggregator's own secret), and each --battery's "
        "battery-<id>.json (its config.json: its own settings, its CoAP key and the group "
        "key, the hub's slot grid and ports; the aggregators it trusts come from "
        "enrollment). Safe to re-run: keys already made, the aggregators a battery trusts "
        "and its own settings are kept. No key is ever printed.",
    )  # fmt: skip
    keys.add_argument("--config", required=True, help="hub.toml (see hub/hub.example.toml)")
    admit = actions.add_parser("admit", help="let an independent aggregator trade here")
    admit.add_argument("--config", required=True, help="hub.toml")
    admit.add_argument("--aggregator", type=int, required=True, help="its key id")
    admit.add_argument("--name", required=True, help="its name (on the page and in logs)")
    admit.add_argument("--host", default=None,
                       help="where it reaches this hub (default: market_bind)")  # fmt: skip
    admit.add_argument("--out", required=True, help="the admission file to write (0600)")
    revoke = actions.add_parser("revoke", help="refuse an aggregator from now on")
    revoke.add_argument("--config", required=True, help="hub.toml")
    revoke.add_argument("--aggregator", type=int, required=True, help="its key id")
    hub_copies.add_arguments(actions)
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
        if args.action in ("admit", "revoke"):
            return admission(args)
        if args.action in hub_copies.ACTIONS:
            return hub_copies.run(args, hub_toml.load(args.config, keys=False))
        cfg = hub_toml.load(args.config)
    except ValueError as exc:  # ConfigError, KeysError, IdentityError: one line each
        print("error: %s" % exc, file=sys.stderr)
        return 2
    except Exception as exc:  # a check's own bug: still one line, never a traceback
        log.debug("loading %s", args.config, exc_info=exc)
        print("error: %s could not be checked: %s" % (args.config, tasks.describe(exc)),
              file=sys.stderr)  # fmt: skip
        return 2
    from hub.service import Hub, StartError

    open_files()

    async def main():
        from gridbid import memtrace

        hub = Hub(cfg)
        watcher = memtrace.start()  # None unless GRIDBID_TRACEMALLOC is set (debugging)
        try:
            await hub.run(args.slots)
        finally:
            if watcher is not None:
                watcher.cancel()
            await hub.close()

    try:
        asyncio.run(main())
    except StartError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hub stopped", flush=True)
    except Exception as exc:  # TaskFailed, or a bug: one line, exit 1 (systemd restarts it)
        log.debug("the hub stopped", exc_info=exc)
        why = str(exc) if isinstance(exc, tasks.TaskFailed) else tasks.describe(exc)
        print("error: hub stopped: %s" % why, file=sys.stderr, flush=True)
        return 1
    return 0


def open_files(most=65536):
    """Raise the soft open-files limit to the hard one (a socket per battery link, page,
    market session: a shell's 1024 is too few for a large site). Under the deploy unit
    both are LimitNOFILE already, and its system call filter refuses setrlimit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass  # the limit stays; the page caps its connections to it (web/server.py)


def keys(args):
    cfg = hub_toml.load(args.config, keys=False)
    bad = [b for b in args.battery if not 0 < b < 2**32]
    if bad:  # a device id is its key id in frame headers: u32
        raise hub_toml.ConfigError("battery ids are 1..2^32-1, not %s" % bad)
    for line in keys_file.provision(governed(cfg), args.battery, args.out, args.template):
        print(line, flush=True)
    return 0


def admission(args):
    """`hub admit` and `hub revoke`: the store's controls, which the running hub reads."""
    from hub.controls import Controls
    from hub.events import Events
    from hub.store import Store

    cfg = hub_toml.load(args.config)
    key_id = args.aggregator
    if not 0 < key_id < 2**32 or key_id == cfg["key_id"]:
        raise hub_toml.ConfigError("aggregator ids are 1..2^32-1 and not the hub's")
    if key_id in {a["key_id"] for a in cfg["aggregators"]}:
        raise hub_toml.ConfigError("aggregator %d is hosted by this hub (hub.toml)" % key_id)
    with Store(cfg["store"]) as store:
        controls = Controls(store, Events())
        if args.action == "revoke":
            controls.revoke(key_id, "hub revoke")
            print("aggregator %d is refused from now on: new bids, contracts and sessions; "
                  "contracts already made run to their end" % key_id)  # fmt: skip
            return 0
        from aggregator.config import admission as admission_of
        from transport import secret_files

        if not cfg["market_port"]:
            raise hub_toml.ConfigError("hub.market_port is 0: this market has no API to admit to")
        host = args.host or cfg["market_bind"]
        if host in ("0.0.0.0", "::"):
            raise hub_toml.ConfigError("--host: the address aggregators reach this hub at")
        made = admission_of(cfg["name"], host, cfg["market_port"], key_id,
                            cfg["keys"].market_key(key_id))  # fmt: skip
        secret_files.write(args.out, made)
        controls.admit(key_id, args.name, "hub admit")
    print("%s: aggregator %d (%s) may trade in market %s at %s:%d; its market key is in "
          "this file (never shown): move it to the aggregator out of band"
          % (args.out, key_id, args.name, cfg["name"], host, cfg["market_port"]))  # fmt: skip
    return 0
