"""Settlement: the hub pays for delivered energy on Solana, in batches.

A [settlement] section in hub.toml turns it on (hub/config/hub_toml.py INTEGRATIONS; the
running part is service.py). Final contracts are grouped per window into batches
(records.py: what a contract pays, the canonical records, the memo); each batch becomes
SPL token transfers of a stable-credit mint from each buyer aggregator's wallet to each
battery owner's, carrying the memo gridbid:<batch>:<sha256 of the records>:<part>/<parts>
(transactions.py). The uploader (uploader.py) journals every signed transaction in the
hub's SQLite store (journal.py) before it is sent, re-sends and rebuilds, and at
start-up waits out strays and reconciles from the chain's memos (recovery.py), so that
nothing is paid twice or lost. Backends (backends.py): LiteSVM in-process (chain.py;
the default, for the demo and the tests: it makes its mint, funds the aggregators and
makes owners' keys, provision.py, and at every start is rebuilt from the journals,
rebuild.py), or JSON-RPC to a cluster (rpc_backend.py) chosen by URL. Keys are
solana-keygen files, mode 0600 or refused, never logged (wallets.py). Status goes out
as "settlement" events (hub/events.py) to the MQTT bridge and the status page;
`gridbid settlement status --config hub.toml` prints the journal.
"""

from pathlib import Path

from hub.integrations.settlement import records
from transport.settings import check as checked

# The payer key of the market as clearing house (margin.py): uploader.payers[CLEARING] pays
# for every buyer, from the margin aggregators deposit.
CLEARING = 0

# Each setting's kind and range (transport/settings.py).
RULES = (
    ("backend", "text", 1, 2048),
    ("wallets", "path", 0, 0),
    ("owners_file", "text", 0, 4096),  # "": none
    ("mint", "text", 0, 64),
    ("decimals", "whole", 0, 18),
    ("cents_per_credit", "whole", 1, 10**6),
    ("batch_s", "whole", 1, 31 * 86400),
    ("max_batch", "whole", 1, 100_000),
    ("poll_s", "number", 0.01, 3600),
    ("durable_nonce", "flag", 0, 0),
    ("reconcile_days", "number", 0, 3650),
    ("fund_credits", "whole", 0, 10**12),
    ("margin_credits", "number", 0, 1e12),
    ("timeout_s", "number", 0.1, 600),
)
DEFAULTS = {
    "backend": "litesvm",  # or an RPC URL: https://api.devnet.solana.com, http://127.0.0.1:8899
    "wallets": "wallets",  # folder of aggregator-<key_id>.json keypairs (mode 0600)
    "owners": {},  # battery (device id) -> its owner's public key (base58)
    "owners_file": "",  # the same as a JSON file {"<device id>": "<base58>"}
    "mint": "",  # the stable-credit mint (USDC on mainnet); "" = LiteSVM makes one
    "decimals": 6,  # the mint's decimals
    "cents_per_credit": 100,  # 1 credit (token) = 1 dollar: 1 cent = 10,000 base units
    "batch_s": 900,  # contracts are batched per window of this many seconds (by slot start)
    "max_batch": 1000,  # contracts per batch at most (a fuller window is split)
    "poll_s": 2.0,  # how often windows are looked at and transactions checked
    "durable_nonce": False,  # sign on a durable nonce per aggregator (long outages)
    "reconcile_days": 30.0,  # how far back the chain's memos are read at start-up
    "fund_credits": 1_000_000,  # LiteSVM only: the faucet's credits per aggregator wallet
    "margin_credits": 1000.0,  # the margin hosted aggregators keep (independent ones: theirs)
    "timeout_s": 10.0,  # RPC request timeout
}


def check(settings, base, where):
    """settings (merged with DEFAULTS) checked, relative paths resolved against `base`."""
    from hub.integrations.settlement import wallets  # solders: only where settlement is set

    s = checked(settings, RULES, where, base)
    backend = s["backend"]
    if backend != "litesvm" and not backend.startswith(("http://", "https://")):
        raise ValueError('%s: backend must be "litesvm" or an http(s):// RPC URL' % where)
    if s["owners_file"]:
        s["owners_file"] = str(Path(base) / s["owners_file"])
    try:
        s["owners"] = {str(d): str(k) for d, k in wallets.owners_map(s["owners"]).items()}
        if s["mint"]:
            wallets.pubkey(s["mint"], "mint")
    except wallets.WalletError as exc:
        raise ValueError("%s: %s" % (where, exc)) from None
    if not s["mint"] and backend != "litesvm":
        raise ValueError("%s: an RPC backend needs the mint's address (mint = ...)" % where)
    if s["mint"] and backend == "litesvm":
        raise ValueError("%s: the LiteSVM backend makes its own mint: leave mint empty" % where)
    try:
        records.units_per_cent(s["decimals"], s["cents_per_credit"])
    except ValueError as exc:
        raise ValueError("%s: decimals/cents_per_credit: %s" % (where, exc)) from None
    return s


async def start(hub, settings):
    """Start settling in the background. -> the Settlement (async close())."""
    from hub.integrations.settlement.service import Settlement

    settlement = Settlement(hub, settings)
    await settlement.open()
    return settlement
