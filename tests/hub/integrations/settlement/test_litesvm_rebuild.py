"""The LiteSVM chain is durable through the store's journals
(hub/integrations/settlement/rebuild.py):
a fresh chain provisioned as the hub does and fed every finalized transaction of both
journals (settlement's payments, the platform's operations) holds exactly the token
balances and supplies of the chain that made them. Real LiteSVM, real SQLite files."""

import asyncio
import json
import types

from helpers.logs import into
from helpers.settlement import AGGREGATORS, CREDIT, FUND, FakeExchange, World, run_until_done
from solders.keypair import Keypair
from solders.transaction import Transaction

from gridbid.credit import add_arguments, run
from hub.events import Events
from hub.integrations.platform.chain_ops import Keys
from hub.integrations.platform.layer import Platform
from hub.integrations.platform.service import PlatformService
from hub.integrations.settlement import DEFAULTS, check, rebuild, wallets
from hub.integrations.settlement.backends import LiteSVMBackend
from hub.integrations.settlement.margin import faucet_funded
from hub.integrations.settlement.provision import SOL
from hub.integrations.settlement.service import Settlement
from hub.integrations.settlement.transactions import TOKEN_PROGRAM, ata, transfer_ix
from hub.store import Store


def token_state(chain, addresses):
    """{address: (mint, owner, amount)} of token accounts, {address: supply} of mints,
    over `addresses` (what a chain's transactions touched)."""
    from solders.token.state import Mint, TokenAccount

    out = {}
    for address in addresses:
        account = chain.svm.get_account(address)
        if account is None or account.owner != TOKEN_PROGRAM or account.lamports == 0:
            continue
        data = bytes(account.data)
        if len(data) == 165:
            t = TokenAccount.from_bytes(data)
            out[str(address)] = (str(t.mint), str(t.owner), t.amount)
        elif len(data) == 82:
            out[str(address)] = Mint.from_bytes(data).supply
    return out


def touched(chain):
    return list(chain._by_address)


def settled_world(tmp_path, clearing=False, **uploader_kw):
    """Owners paid by settlement; credits bought, certificates minted, NRG granted
    through the platform, before and after the payments (the journals interleave).
    clearing: as a hub pays, from the margin the aggregators deposited from the wallets
    its faucet funded (margin.py); else from each aggregator's wallet (the uploader alone)."""
    w = World(tmp_path, faucet=clearing)
    run_ = asyncio.run
    if clearing:
        run_(w.fund_margin(w.margin()))
    w.fill(windows=1, devices=4)
    keys = Keys(w.folder, make=True)  # settlement's folder: aggregator-<k>, owners/owner-<d>
    for k, wallet in w.payers.items():  # the address book: the aggregators' public keys
        keys.add("aggregator-%d" % k, wallet.pubkey)
    keys.add("alice", Keypair().pubkey())
    w.chain.airdrop(keys.authority.pubkey, 100 * SOL)
    settings = {"sources": {101: "solar", 102: "wind"}, "gov_supply": 1000}
    p = Platform(w.store, LiteSVMBackend(w.chain), keys, w.mint, settings)
    run_(p.credit.set_rate("r", 100))
    if clearing:  # the faucet funded them before the ledger existed
        assert len(run_(p.credit.open_funded(faucet_funded(w.store.db.conn)))) == len(AGGREGATORS)
    for k in AGGREGATORS if not clearing else ():  # provision.py funded them
        run_(p.credit.opening("open-%d" % k, "aggregator-%d" % k, FUND * CREDIT))
    run_(p.credit.purchase("buy-1", "aggregator-1", 5_000))
    run_(run_until_done(w.uploader(**uploader_kw)))
    run_(p.credit.purchase("buy-2", "aggregator-2", 7_000))
    assert run_(p.rec.mint("m1"))
    run_(p.gov.genesis())
    run_(p.gov.grant("g1", "alice", 10))
    assert run_(p.reconcile()) == []
    return w, keys, settings


def finalized_rows(w):
    sql = "SELECT count(*) FROM %s WHERE status = 'finalized'"
    conn = w.store.db.conn
    return sum(
        conn.execute(sql % t).fetchone()[0]
        for t in rebuild.JOURNALS
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (t,)).fetchone()
    )


def test_a_rebuilt_chain_holds_the_same_tokens_and_reconciles(tmp_path):
    w, keys, settings = settled_world(tmp_path)
    assert sum(w.balances().values()) > 0
    before = token_state(w.chain, touched(w.chain))
    chain, mint, replayed, failed = rebuild.start(w.store.db.conn, w.folder, w.payers, FUND, 6)
    assert mint == w.mint
    assert (replayed, failed) == (finalized_rows(w), 0)
    assert token_state(chain, touched(w.chain)) == before
    # Memos and the index by address are recorded as for a live send (recovery reads them).
    for wallet in w.payers.values():
        old = [(x.signature, x.memo) for x in w.chain.signatures_for_address(wallet.pubkey)]
        new = [(x.signature, x.memo) for x in chain.signatures_for_address(wallet.pubkey)]
        assert new == old
    chain.airdrop(keys.authority.pubkey, 100 * SOL)
    p = Platform(w.store, LiteSVMBackend(chain), keys, mint, settings)
    assert asyncio.run(p.reconcile()) == []
    w.store.close()


def test_replay_runs_nothing_twice(tmp_path):
    w, keys, settings = settled_world(tmp_path)
    chain, _mint, replayed, failed = rebuild.start(w.store.db.conn, w.folder, w.payers, FUND, 6)
    assert replayed > 0 and failed == 0
    state = token_state(chain, touched(w.chain))
    assert rebuild.rebuild(chain, w.store.db.conn) == (0, 0)  # AlreadyProcessed: skipped
    assert rebuild.rebuild(w.chain, w.store.db.conn) == (0, 0)  # the chain that made them
    # The hub's platform service takes in only what its chain has not seen.
    settlement = types.SimpleNamespace(
        chain=chain,
        uploader=types.SimpleNamespace(backend=LiteSVMBackend(chain), mint=w.mint),
        funded={},
    )
    hub = types.SimpleNamespace(store=w.store)
    service = PlatformService(hub, {**settings, "keys": str(w.folder)}, settlement)
    assert service.replay_new() == 0
    assert token_state(chain, touched(w.chain)) == state
    w.store.close()


def test_a_row_that_does_not_replay_is_counted_and_the_rest_replay(tmp_path):
    w, _keys, _settings = settled_world(tmp_path)
    before = token_state(w.chain, touched(w.chain))
    # A transfer of more credits than the payer holds: it lands with an error.
    payer = w.payers[1]
    owner = w.owners.get(101)
    ix = transfer_ix(payer.pubkey, owner, w.mint, 10**15, 6)
    blockhash, _ = w.chain.latest_blockhash()
    bad = Transaction.new_signed_with_payer([ix], payer.pubkey, [payer.keypair], blockhash)
    command = w.store.db.conn.execute("SELECT id FROM platform_commands LIMIT 1").fetchone()[0]
    with w.store.transaction() as conn:  # the oldest rows: the rest replays after them
        for signature, raw in ((str(bad.signatures[0]), bytes(bad)), ("garbage", b"\x01junk")):
            conn.execute(
                "INSERT INTO platform_txs VALUES (?, ?, ?, 0, 'finalized', NULL, 0, 0)",
                (signature, command, raw),
            )
    chain, _mint, replayed, failed = rebuild.start(w.store.db.conn, w.folder, w.payers, FUND, 6)
    assert failed == 2 and replayed == finalized_rows(w) - 2
    assert token_state(chain, touched(w.chain)) == before
    w.store.close()


def test_durable_nonce_payments_replay(tmp_path):
    """Nonce accounts are made at a start (recovery.py, not journaled): provisioning
    makes them first on a rebuilt chain, so the nonce-signed payments replay."""
    folder = tmp_path / "wallets"
    folder.mkdir(mode=0o700)
    nonces = {k: wallets.read_or_create(folder / ("nonce-%d.json" % k), True) for k in AGGREGATORS}
    payers = wallets.payers(folder, AGGREGATORS, create_missing=True)
    by_pubkey = {str(payers[k].pubkey): n for k, n in nonces.items()}
    w, _keys, _settings = settled_world(tmp_path, nonces=by_pubkey)
    assert (
        w.store.db.conn.execute(
            "SELECT count(*) FROM settlement_txs WHERE nonce IS NOT NULL AND status = 'finalized'"
        ).fetchone()[0]
        > 0
    )
    before = token_state(w.chain, touched(w.chain))
    chain, _mint, replayed, failed = rebuild.start(
        w.store.db.conn, w.folder, w.payers, FUND, 6, nonces=nonces
    )
    assert (replayed, failed) == (finalized_rows(w), 0)
    assert token_state(chain, touched(w.chain)) == before
    w.store.close()


class FakeHub:
    def __init__(self, store):
        self.cfg = {"name": "hub", "aggregators": [{"key_id": k, "name": "agg%d" % k}
                                                   for k in AGGREGATORS]}  # fmt: skip
        self.store, self.lines = store, []
        self.exchange = FakeExchange()
        self.events = Events()
        into(self.lines)
        self.log = self.lines.append

    def aggregators(self):
        return {a["key_id"]: a["name"] for a in self.cfg["aggregators"]}


def test_the_hub_rebuilds_its_chain_at_start(tmp_path):
    w, _keys, _settings = settled_world(tmp_path, clearing=True)
    before = token_state(w.chain, touched(w.chain))
    hub = FakeHub(w.store)
    s = Settlement(hub, check({**DEFAULTS, "poll_s": 60}, tmp_path, "w"))

    async def start_and_stop():
        await s.open()
        await s.close()

    asyncio.run(start_and_stop())
    assert s.chain is not w.chain
    assert token_state(s.chain, touched(w.chain)) == before
    line = "settlement: LiteSVM chain rebuilt from the journal: %d transactions (0 did not replay)"
    assert line % finalized_rows(w) in hub.lines, hub.lines
    w.store.close()


def credit_cli(*argv):
    import argparse

    parser = argparse.ArgumentParser(prog="gridbid credit")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def site(tmp_path, platform=""):
    """hub.toml of a LiteSVM site: the aggregators, [settlement] and [platform]."""
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nstore = "hub.sqlite"\n\n'
        + "".join("[[aggregator]]\nkey_id = %d\n\n" % k for k in AGGREGATORS)
        + '[settlement]\nwallets = "wallets"\nfund_credits = %d\n\n' % FUND
        + '[platform]\nkeys = "wallets"\n'
        + platform
    )
    return config


def test_the_cli_sees_the_hub_s_balances(tmp_path, capsys):
    w, _keys, _settings = settled_world(tmp_path, clearing=True)
    config = site(tmp_path, "gov_supply = 1000\n")
    capsys.readouterr()
    assert credit_cli("reconcile", "--config", str(config)) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert json.loads(out.out) == {"reconciled": True} and "warning" not in out.err
    assert credit_cli("balances", "--config", str(config)) == 0
    balances = json.loads(capsys.readouterr().out)
    keys = [x.pubkey for x in w.payers.values()] + list(w.owners.known.values())
    keys.append(w.clearing.pubkey)  # the margin the aggregators deposited, less what it paid
    for key in keys:
        assert balances.get(str(key), 0) == (w.chain.token_balance(ata(key, w.mint)) or 0)
    assert sum(balances.get(str(k), 0) for k in w.owners.known.values()) > 0
    w.store.close()


def test_a_new_site_reconciles_from_the_start(tmp_path, capsys):
    """A first `gridbid credit` on a fresh LiteSVM site: no aggregator has been funded
    (the hub's faucet funds their own wallets when they ask), so the store and the chain
    agree before anything else happened, and again after a purchase.
    A reconcile is a check: on a site with nothing yet it makes nothing and says so."""
    config = str(site(tmp_path))
    assert credit_cli("reconcile", "--config", config) == 2
    assert "no store" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.toml"]
    assert credit_cli("rate", "100", "--id", "r1", "--config", config) == 0
    capsys.readouterr()
    assert credit_cli("reconcile", "--config", config) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == {"reconciled": True}
    buyer = str(Keypair().pubkey())  # an account named by its public key
    assert credit_cli("buy", buyer, "50", "--id", "b1", "--config", config) == 0
    capsys.readouterr()
    assert credit_cli("reconcile", "--config", config) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == {"reconciled": True}
    with Store(tmp_path / "hub.sqlite") as store:
        kinds = [r[0] for r in store.db.conn.execute(
            "SELECT kind FROM credit_moves ORDER BY rowid")]  # fmt: skip
    assert kinds == ["purchase"]  # no opening: nothing was funded before the ledger


def test_a_new_hub_records_its_funding_once_and_reconciles_across_restarts(tmp_path):
    from hub.integrations.platform import DEFAULTS as PLATFORM
    from hub.integrations.platform import check as platform_check

    store = Store(tmp_path / "hub.sqlite")
    hub = FakeHub(store)
    settings = platform_check(dict(PLATFORM), tmp_path, "[platform]")
    wallets_ = [Keypair().pubkey() for _ in AGGREGATORS]
    for _start in range(2):  # a first start, then a restart on the same store

        async def one_round():
            s = Settlement(hub, check({**DEFAULTS, "poll_s": 60}, tmp_path, "[settlement]"))
            await s.open()
            for key_id, wallet in enumerate(wallets_, 1):  # aggregators' own, funded once
                await s.margin.faucet(key_id, wallet)
            service = PlatformService(hub, settings, s)
            await service.round()
            diffs = await service.platform.reconcile()
            await s.close()
            return diffs

        assert asyncio.run(one_round()) == []
        openings = store.db.conn.execute(
            "SELECT count(*) FROM credit_moves WHERE kind = 'opening'").fetchone()[0]  # fmt: skip
        assert openings == len(AGGREGATORS)
    assert sum("funding recorded as openings" in x for x in hub.lines) == 1, hub.lines
    store.close()
