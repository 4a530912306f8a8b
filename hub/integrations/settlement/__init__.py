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

# The payer key of the market as clearing house (margin.py): uploader.payers[CLEARING] pays
# for every buyer, from the margin aggregators deposit.
CLEARING = 0

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

    s = dict(settings)
    backend = s["backend"]
    if backend != "litesvm" and not (
        isinstance(backend, str) and backend.startswith(("http://", "https://"))
    ):
        raise ValueError('%s: backend must be "litesvm" or an http(s):// RPC URL' % where)
    for name in ("wallets", "owners_file"):
        if not isinstance(s[name], str):
            raise ValueError("%s: %s must be a path" % (where, name))
    if not s["wallets"]:
        raise ValueError("%s: wallets must name a folder" % where)
    s["wallets"] = str(Path(base) / s["wallets"])
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
    for name, low in (("decimals", 0), ("cents_per_credit", 1), ("batch_s", 1),
                      ("max_batch", 1), ("fund_credits", 0)):  # fmt: skip
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < low:
            raise ValueError("%s: %s must be a whole number >= %d" % (where, name, low))
    try:
        records.units_per_cent(s["decimals"], s["cents_per_credit"])
    except ValueError as exc:
        raise ValueError("%s: decimals/cents_per_credit: %s" % (where, exc)) from None
    for name in ("poll_s", "reconcile_days", "timeout_s", "margin_credits"):
        if isinstance(s[name], bool) or not isinstance(s[name], (int, float)) or s[name] < 0:
            raise ValueError("%s: %s must be a number >= 0" % (where, name))
    if s["poll_s"] <= 0 or s["timeout_s"] <= 0:
        raise ValueError("%s: poll_s and timeout_s must be above 0" % where)
    if not isinstance(s["durable_nonce"], bool):
        raise ValueError("%s: durable_nonce must be true or false" % where)
    return s


async def start(hub, settings):
    """Start settling in the background. -> the Settlement (async close())."""
    from hub.integrations.settlement.service import Settlement

    settlement = Settlement(hub, settings)
    await settlement.open()
    return settlement
