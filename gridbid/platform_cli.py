"""What `gridbid credit|rec|gov` share: options, opening the platform, printing results.

Settings come from hub.toml (--config): [hub] store, [settlement] backend / wallets /
decimals / mint, and [platform] (DEFAULTS in hub/integrations/platform/settings.py);
options override.

The LiteSVM backend keeps its chain in memory, so a CLI process rebuilds it at each
start exactly as the hub does (hub/integrations/settlement/rebuild.py): provisioned with the
clearing house's account, the wallets the margin faucet funded, [settlement] wallets and
durable_nonce, then every finalized transaction of the journals (settlement's payments,
the margin deposits and the platform's) re-executed in order by the real programs (no
blockhash age on replay). Keys are the same files, so the addresses are the same, and
the balances are the hub's. On a cluster (an RPC backend) nothing is rebuilt: the chain
is the cluster's, and its memos are read first (recovery.py) so a command that landed but
whose record was lost is refused.

A read (credit balances, rec show, gov proposals and rewards: read()) only reads the
store (gridbid/readonly.py): no chain, no key, nothing made. `credit reconcile` needs
the chain: it makes no file, folder, table or key either (a missing one is an error),
but like the hub it records the aggregators' openings and finishes pending commands.
"""

import asyncio
import json
import sys
import tomllib
import types
from pathlib import Path

from gridbid import readonly
from hub.config import keys_file
from hub.integrations import settlement as settlement_cfg
from hub.integrations.platform import DEFAULTS, check, schema
from hub.integrations.platform.chain_ops import Keys
from hub.integrations.platform.credit import Credit
from hub.integrations.platform.engine import Engine, PlatformError
from hub.integrations.platform.gov import Gov
from hub.integrations.platform.incentives import Incentives
from hub.integrations.platform.layer import Platform
from hub.integrations.platform.rec import Rec
from hub.integrations.settlement import CLEARING
from hub.integrations.settlement.backends import BackendError, LiteSVMBackend

SOL = 10**9


def add_common(parser, chain=True, command_id=False, source=False, participant=False):
    """The options of one action: the store's always; the chain's (wallets, backend)
    unless it only reads the store; --id for a command that changes state; --wallet for
    a participant's own command."""
    parser.set_defaults(keys=None, backend=None, source=[], command_id=None, wallet=None)
    parser.add_argument("--config", help="hub.toml ([hub], [settlement], [platform])")
    parser.add_argument("--db", help="the hub's SQLite store (default: [hub] store)")
    if chain:
        parser.add_argument("--keys", help="wallet folder (default: [platform] keys)")
        parser.add_argument("--backend", help='"litesvm" or an RPC URL ([settlement] backend)')
    if source:
        parser.add_argument("--source", action="append", default=[], metavar="DEVICE=SOURCE",
                            help="a device's source (solar, wind, grid); repeatable")  # fmt: skip
    if command_id:
        parser.add_argument("--id", dest="command_id", help="the command's id (a retry reuses it)")
    if participant:
        parser.add_argument("--wallet", help="the participant's own wallet file (0600): sign "
                            "here; without it a signing request is printed for `gridbid "
                            "wallet sign` where the key lives")  # fmt: skip


def own_wallet(args):
    """The participant's wallet named by --wallet (read by this process only), or None."""
    from hub.integrations.settlement import wallets

    if not args.wallet:
        return None
    try:
        return wallets.read(args.wallet)
    except wallets.WalletError as exc:
        raise PlatformError(str(exc)) from None


def settings_from(args):
    data, base = {}, Path(".")
    if args.config:
        base = Path(args.config).parent
        data = tomllib.loads(Path(args.config).read_text())
    hub, settlement = data.get("hub", {}), data.get("settlement", {})
    s = check({**DEFAULTS, **data.get("platform", {})}, base, "[platform]")
    s["decimals"] = settlement.get("decimals", s["decimals"])  # one mint: settlement's
    # Sources the batteries' own configs declare; [platform.sources] and --source win.
    keys_path = base / hub.get("keys_file", "hub-keys.json")
    s["sources"] = {**keys_file.battery_sources(keys_path), **s["sources"]}
    for item in args.source:
        device, _, source = item.partition("=")
        s["sources"][int(device)] = source
    keys = args.keys or s["keys"]
    return {
        "db": args.db or str(base / hub.get("store", "gridbid-hub.sqlite")),
        "keys": keys,
        "backend": args.backend or settlement.get("backend", "litesvm"),
        "mint": settlement.get("mint", ""),
        "platform": s,
        "provision": _provision(data, base, keys),  # used on LiteSVM only
    }


def _provision(data, base, keys):
    """What the hub's Settlement.open provisions a LiteSVM chain with: {"folder",
    "key_ids", "fund_credits", "durable_nonce"}. Without a [settlement] section the hub
    has no chain of its own: the mint only, from the keys folder."""
    if "settlement" not in data:
        return {"folder": keys, "settles": False, "durable_nonce": False}
    settings = {**settlement_cfg.DEFAULTS, **data["settlement"]}
    s = settlement_cfg.check(settings, base, "[settlement]")
    return {"folder": s["wallets"], "settles": True, "durable_nonce": s["durable_nonce"]}


PLATFORM_TABLES = (
    "platform_schema_version", len(schema.MIGRATIONS), "platform",
    "the hub's [platform], or a credit, rec or gov command that changes state,",
)  # fmt: skip


class Reader:
    """What the platform's read methods use of an Engine, over a connection that cannot
    write: an Engine would make the platform's tables, and a Platform its keys."""

    keys = None
    rows = Engine.rows

    def __init__(self, conn):
        self.conn = conn

    def register(self, operation):
        pass  # a reader runs no command


def read(args, query):
    """Print query(platform) as JSON, over the store only: `platform` has the
    Platform's credit, rec, gov and incentives, able to read. -> exit code"""
    try:
        cfg = settings_from(args)
        conn = readonly.connect(cfg["db"], [PLATFORM_TABLES])
    except (readonly.ReadError, ValueError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    try:
        s, reader = cfg["platform"], Reader(conn)
        gov = Gov(reader, None, s)
        platform = types.SimpleNamespace(
            credit=Credit(reader, None, s["decimals"]),
            rec=Rec(reader, None, s["sources"], s["kwh_per_certificate"]),
            gov=gov,
            incentives=Incentives(reader, gov, s["incentives"]),
        )
        result = query(platform)
    finally:
        conn.close()
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def open_platform(args, read_only=False):
    """read_only: make no file, folder, table or key (a missing one is an error)."""
    from hub.store import Store

    cfg = settings_from(args)
    make = cfg["backend"] == "litesvm" and not read_only
    if read_only:
        readonly.connect(cfg["db"], [PLATFORM_TABLES]).close()
        _need_wallets(cfg)
    store = Store(cfg["db"])
    keys = Keys(cfg["keys"], make=make)
    if cfg["backend"] == "litesvm":
        chain, mint, funded = _litesvm(cfg, store, keys.authority.pubkey, make)
        backend = LiteSVMBackend(chain)
    else:
        from hub.integrations.platform.chain_ops import pk
        from hub.integrations.settlement.rpc_backend import RpcBackend

        if not cfg["mint"]:
            raise PlatformError("an RPC backend needs [settlement] mint")
        mint, backend, funded = pk(cfg["mint"]), RpcBackend(cfg["backend"]), {}
    return Platform(store, backend, keys, mint, cfg["platform"], funded=funded)


def _need_wallets(cfg):
    """A check makes no key: the wallets that Keys and, on LiteSVM, the provisioning
    (provision.py) would make when missing must be there (the aggregators' are read
    with create_missing=False)."""
    needed = [Path(cfg["keys"]) / "platform-authority.json"]
    if cfg["backend"] == "litesvm":
        p = cfg["provision"]
        folder, nonces = Path(p["folder"]), [CLEARING] if p["durable_nonce"] else []
        needed += [folder / "mint.json", folder / "mint-authority.json"]
        needed += [folder / ("nonce-%d.json" % k) for k in nonces]
    for path in needed:
        if not path.is_file():
            raise PlatformError("no wallet file %s (the hub or a command that changes "
                                "state makes it)" % path)  # fmt: skip


def _litesvm(cfg, store, authority, make):
    """The hub's chain, rebuilt here as the hub's Settlement.open does
    (hub/integrations/settlement/rebuild.py): the clearing account, the faucet's wallets,
    the journals. -> (chain, mint, {aggregator key id: base units the faucet gave it})"""
    from hub.integrations.settlement import margin, provision, rebuild, wallets

    p, decimals, folder = cfg["provision"], cfg["platform"]["decimals"], cfg["provision"]["folder"]
    payers = {}
    if p["settles"]:
        payers[CLEARING] = wallets.read_or_create(wallets.clearing_path(folder), make)
    nonces = provision.nonce_wallets(folder, payers) if p["durable_nonce"] else None
    chain, mint, _replayed, failed = rebuild.start(
        store.db.conn, folder, payers, 0, decimals, nonces=nonces
    )
    chain.airdrop(authority, 1000 * SOL)
    if failed:
        print("warning: %d journaled transactions did not replay" % failed, file=sys.stderr)
    return chain, mint, margin.faucet_funded(store.db.conn)


def need_id(args):
    if not args.command_id:
        raise PlatformError("this command changes state: give it an --id (reuse it to retry)")
    return args.command_id


async def _recovered(platform, action):
    # On a cluster: commands whose transactions landed but whose records were lost are
    # refused (recovery.py); without the hold (a blockhash's life at each call), so a
    # lost journal's pending command is signed again only by the hub (service.py).
    if not isinstance(platform.engine.backend, LiteSVMBackend):
        await platform.recover(hold=False)
    await platform.credit.open_funded(platform.funded)
    return await action(platform)


def execute(args, action, read_only=False):
    """Open, run `action(platform)` (a coroutine function), print JSON. -> exit code."""
    try:
        platform = open_platform(args, read_only)
    except (PlatformError, readonly.ReadError, ValueError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_recovered(platform, action))
    except (PlatformError, BackendError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    finally:
        platform.engine.store.close()
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
