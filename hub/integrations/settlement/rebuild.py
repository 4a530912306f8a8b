"""The LiteSVM chain rebuilt from the store's journals, the same way at every start (the
hub's Settlement.open, the platform CLI's open_platform):

1. provision (provision.py): the mint from its kept key files, each aggregator's wallet
   funded with `fund_credits` (the hub's [settlement] fund_credits and aggregators), and
   with durable nonces each aggregator's nonce account (made at a start, not journaled);
   and the wallets the margin faucet funded (margin_faucet, margin.py) funded again;
2. every FINALIZED journaled transaction of the journals, settlement's (settlement_txs),
   the aggregators' margin deposits (margin_deposits) and what was paid back of it
   (margin_withdrawals), and the platform's (platform_txs,
   when the file has that table), re-executed by Chain.replay in the order they were made.

Token balances (credits, certificates, NRG) come out as the hub left them; lamports do
not (airdrops are not journaled). Limits, each counted as failed, never fatal:
- order is created_at (when each was signed and journaled), then rowid: across the two
  journals that approximates the order they landed in, which is what counts when one
  depends on the other (an aggregator paying owners with credits it bought through the
  platform). Two processes (the hub and a CLI) signing at the same moment could in
  principle land in the other order.
- a finalized row without bytes (adopted from the chain's memos after its journal row
  was lost) cannot be replayed; unless this chain already holds its signature, it is
  counted as failed.
- provisioning runs first, with today's settings: an aggregator added to hub.toml later,
  or a changed fund_credits, is funded as if it had been there from the start (credit
  reconciliation counts that funding as each aggregator's opening move, once).
- durable-nonce transactions replay because provisioning makes the nonce accounts first
  and LiteSVM checks no nonce value (its blockhash check is off): each advance only needs
  a new block, which Chain makes after every nonce transaction.
"""

from solders.signature import Signature

from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.margin import faucet_wallets
from hub.integrations.settlement.provision import provision

# Read by name: settlement does not import hub.integrations.platform; each journal exists
# once its schema has been applied to this file (settlement's or the platform's).
QUERY = "SELECT signature, raw, created_at, rowid FROM %s WHERE status = 'finalized'"
JOURNALS = ("settlement_txs", "platform_txs", "margin_deposits", "margin_withdrawals")


def journaled(conn):
    """[(signature text, raw bytes or None)] of every finalized journaled transaction,
    oldest first (created_at, then rowid)."""
    marks = ",".join("?" * len(JOURNALS))
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (%s) ORDER BY name DESC"
        % marks, JOURNALS)]  # fmt: skip
    if not tables:
        return []
    sql = " UNION ALL ".join(QUERY % t for t in tables) + " ORDER BY 3, 4"
    return [(signature, raw) for signature, raw, _at, _rowid in conn.execute(sql)]


def rebuild(chain, conn):
    """Replay the journals on `chain`. -> (replayed, failed); already seen is neither."""
    failed, raws = 0, []
    for signature, raw in journaled(conn):
        if raw:
            raws.append(raw)
        elif chain.status(Signature.from_string(signature)) is None:
            failed += 1  # landed once, its bytes unknown: see the module doc
    replayed, refused = chain.replay(raws)
    return replayed, failed + refused


def start(conn, folder, payers, fund_credits, decimals, nonces=None, chain=None, **chain_kw):
    """A provisioned chain with the journals replayed. -> (chain, mint, replayed, failed)"""
    chain = chain or Chain(**chain_kw)
    mint = provision(chain, folder, payers, fund_credits, decimals, nonces=nonces,
                     faucet=faucet_wallets(conn))  # fmt: skip
    replayed, failed = rebuild(chain, conn)
    return chain, mint, replayed, failed
