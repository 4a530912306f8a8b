"""The platform layer (GridTokenX document, issue 8): stable credit, renewable energy
certificates, governance and incentives, on one Pi next to the market.

Layout (one concern per module):
    schema.py      its own tables in the hub's SQLite file, versioned by its own
                   migration list (table platform_schema_version), append-only audit
                   tables enforced by triggers, as hub/store/schema.py does
    engine.py      commands: an id each (a replay is refused with the first result),
                   planned in one store transaction, signed and JOURNALED before the
                   first send (platform_txs), sent, checked like the settlement uploader
                   (height, then status; re-send while valid; re-sign only once expired),
                   then applied; resume() finishes what a crash left pending
    signing.py     who signs: the platform's keys its own commands; a participant its own,
                   in its process (--wallet) or as a signing request signed where its key
                   lives and submitted (what the request shows its signer: describe())
    errors.py      PlatformError (a refusal, with why), Replayed, Pending
    chain_ops.py   keys (0600 wallet files) and instruction builders over
                   hub/integrations/settlement/transactions.py (memo, ATA, transfer_checked) and
                   spl.token (mint, burn, fixed supply)
    credit.py      stable credit: purchases and redemptions at an operator-set rate,
                   ledger entries, reconciliation with the chain (supply and balances)
    rec.py         certificates: minted from metered renewable energy, one SPL mint per
                   vintage, listed, bought (credits for certificates, one transaction),
                   retired (burned, with a memo); rec_ops.py: list/unlist/buy/retire
    gov.py         NRG: a fixed supply (mint authority dropped), stakes with a lock-up,
                   proposals voted by stake, passed ones recorded as hub controls
    recovery.py    a lost journal/store: the authority's memo history read at a start;
                   landed commands journaled again or refused for good (what is and is
                   not rebuilt is listed there)
    incentives.py  NRG rewards per epoch (conservation, demand response, liquidity):
                   documented formulas with caps and a budget, computed from the store,
                   paid in batches from the treasury
    service.py     inside a running hub: shares settlement's chain and mint; mints,
                   ticks governance and pays rewards every poll_s
    layer.py       Platform: the four parts over one engine (the CLIs' and the service's)
    settings.py    [platform] in hub.toml: defaults and their check at load
    views.py       what the status page reads of these tables (read-only, no chain)
    gridbid/credit.py, rec.py, gov.py: `gridbid credit|rec|gov ...` (platform_cli.py:
                   options, and on LiteSVM the hub's chain rebuilt from both journals, as
                   the hub does at each start: hub/integrations/settlement/rebuild.py)

How operations reach the chain: through the same backend interface the settlement uses
(hub/integrations/settlement/backends.py: LiteSVM in-process by default, or RPC), with the same
journal-before-send rule. The credit mint IS settlement's mint (provision.py makes it on
LiteSVM), so what aggregators buy here is what the uploader pays owners with, and
credit.reconcile() adds settlement's finalized payments to the ledger before comparing
with the chain. The platform authority (<keys>/platform-authority.json) pays fees and
rent, mints certificates and holds the escrow of listed certificates.

Not edited: hub/store/schema.py, hub/store/__init__.py, hub/integrations/settlement/*:
this package reads
their tables (contracts, telemetry, bids, trades, price_signals, settlement_parts),
calls their functions, and appends to one (controls, append-only: a passed proposal).
One read goes the other way: hub/integrations/settlement/rebuild.py replays platform_txs (by name)
when it rebuilds a LiteSVM chain.
"""

# Only the settings here: hub.toml's loader and the status page import this package, and
# neither may load the chain's code (solders). The parts: layer.Platform,
# chain_ops.Keys, engine.PlatformError / Replayed.
from hub.integrations.platform.settings import DEFAULTS, SOURCES, check

__all__ = ["DEFAULTS", "SOURCES", "check", "start"]


async def start(hub, settings):
    """hub/config/hub_toml.py INTEGRATIONS hook: run the platform in the hub (service.py)."""
    from hub.integrations.platform.service import start as start_service

    return await start_service(hub, settings)
