"""Attacks on participants' signatures (hub/integrations/platform/signing.py), found by a
review of the change and each failing before its fix: a memo nobody signed adopted at
recovery, a doctored request signed blind, a submit racing the hub's expiry, a vote
counted before its signature came, a wallet kept after its command, and the
platform's own command ids taken. Real LiteSVM (SPL Token, ATA, Memo) and SQLite."""

import base64

import pytest
from helpers.platform import EPOCH, EPOCH_S, RULES, World, fill
from solders import system_program
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction

from hub.integrations.platform import signing
from hub.integrations.platform.chain_ops import burn_ix, memo, transfer_ixs
from hub.integrations.platform.engine import Engine, Pending, PlatformError
from hub.integrations.settlement.transactions import ata
from hub.store import Store


@pytest.fixture
def w(minted):  # conftest.py: certificates 1..3 minted, carol holding credits
    return minted


def balance(w, name):
    return w.run(w.backend.token_balance(ata(w.key(name), w.mint))) or 0


def forged_memo(w, text, stranger):
    """A memo transaction naming a command, landed by someone who is not its signer: a
    stranger paying the authority a lamport (so it is in the authority's history), or
    the operator with the authority's key alone."""
    authority = w.keys.authority
    blockhash, _ = w.run(w.backend.latest_blockhash())
    if stranger:
        x = Keypair()
        w.chain.airdrop(x.pubkey(), 10**9)
        ixs = [memo(text, x.pubkey()), system_program.transfer(
            {"from_pubkey": x.pubkey(), "to_pubkey": authority.pubkey, "lamports": 1})]  # fmt: skip
        payer, key = x.pubkey(), x
    else:
        ixs, payer, key = [memo(text, authority.pubkey)], authority.pubkey, authority.keypair
    msg = signing.message(ixs, payer, blockhash)
    _sig, err, landed = w.chain.send(Transaction.populate(msg, [key.sign_message(bytes(msg))]))
    assert err is None and landed


@pytest.mark.parametrize("stranger", [False, True])
def test_recovery_never_adopts_a_command_its_participant_has_not_signed(w, stranger):
    g, engine = w.platform.gov, w.platform.engine
    w.run(g.genesis())
    w.run(g.grant("g1", "bob", 100))
    w.run(g.stake("s1", "bob", 60, 10**6, wallet=w.signer("bob")))
    w.run(g.propose("p1", "bob", "p_con", 5.0, 100, 200, wallet=w.signer("bob")))
    assert w.run(g.vote("v1", "bob", "p1", True))["status"] == "awaiting signature"
    forged_memo(w, "gridbid-gov:vote:v1:p1:yes:60", stranger)
    report = w.run(w.platform.recover())
    assert report["conflicts"] == ["v1"] and report["adopted"] == []
    assert engine.command("v1")["status"] == "pending"  # still bob's to sign, or not
    assert engine.rows("SELECT * FROM gov_votes WHERE command = 'v1'") == []
    assert any("v1" in d for d in w.run(w.platform.reconcile()))  # reported


def test_the_sign_tool_shows_every_token_movement_of_a_doctored_request(w, capsys):
    """Whoever hands over request.json may add a transfer of the signer's own credits:
    `gridbid wallet sign` prints every movement and what leaves the signer in all."""
    from gridbid.wallet import sign

    engine, carol = w.platform.engine, w.signer("carol")
    request = w.run(w.platform.credit.redeem("d1", "carol", 1000))
    blockhash = Message.from_bytes(base64.b64decode(request["message"])).recent_blockhash
    authority = w.keys.authority.pubkey
    ixs = [memo("gridbid-credit:redemption:d1:carol:1000", carol.pubkey),
           burn_ix(w.mint, carol.pubkey, 1000, 6)]  # fmt: skip
    ixs += transfer_ixs(authority, carol.pubkey, authority, w.mint, 900_000, 6)
    doctored = dict(request, message=base64.b64encode(
        bytes(signing.message(ixs, authority, blockhash))).decode())  # fmt: skip
    sign(doctored, carol)
    shown = capsys.readouterr().err
    assert "move 900000 base units of mint %s" % w.mint in shown
    assert "authorised by YOU" in shown
    assert "in all, from your accounts: 901000 base units" in shown
    sign(request, carol)  # the true one: the burn alone
    assert "in all, from your accounts: 1000 base units" in capsys.readouterr().err
    # What the platform never sends is not signed at all.
    approve = bytes(signing.message([memo("x", carol.pubkey), system_program.transfer(
        {"from_pubkey": carol.pubkey, "to_pubkey": authority, "lamports": 5})],
        authority, blockhash))  # fmt: skip
    with pytest.raises(ValueError, match="never sends"):
        sign(dict(request, message=base64.b64encode(approve).decode()), carol)
    fees = bytes(signing.message([memo("x", carol.pubkey)], carol.pubkey, blockhash))
    with pytest.raises(ValueError, match="pay its fees"):
        sign(dict(request, message=base64.b64encode(fees).decode()), carol)
    assert engine.command("d1")["status"] == "pending"


def test_a_submit_racing_the_hub_s_expiry_is_either_sent_or_failed_never_both(w, monkeypatch):
    """The hub's resume() finds the request past its time while the participant's submit
    journals it: the hub's fail must not win over a journaled transaction."""
    r, engine = w.platform.rec, w.platform.engine
    hub = w.platform_over(w.backend, Store(w.tmp / "hub.sqlite"))  # another process
    request = w.run(r.list("l1", "owner-101", [1], 400_000))
    signature = w.signer("owner-101").keypair.sign_message(base64.b64decode(request["message"]))
    fail = Engine._fail

    def racing(self, command, operation, payload, error, unsigned=False):
        if self is hub.engine and command == "l1":  # between the hub's read and its fail
            monkeypatch.setattr(signing, "REQUEST_S", 60.0)
            finish = engine._finish

            async def later(c):
                engine._finish = finish

            engine._finish = later
            # The submit, run to its end here (it awaits nothing before its journal):
            # journaled, not sent yet.
            with pytest.raises(StopIteration):
                engine.submit("l1", str(signature)).send(None)
            monkeypatch.setattr(signing, "REQUEST_S", -1.0)
        return fail(self, command, operation, payload, error, unsigned)

    monkeypatch.setattr(Engine, "_fail", racing)
    monkeypatch.setattr(signing, "REQUEST_S", -1.0)
    with pytest.raises(Pending, match="signed meanwhile"):
        w.run(hub.engine._finish("l1"))
    monkeypatch.setattr(Engine, "_fail", fail)
    monkeypatch.setattr(signing, "REQUEST_S", 60.0)
    assert engine.command("l1")["status"] == "pending"
    assert w.run(engine._finish("l1"))["serials"] == [1]  # the participant's goes through
    assert [c["serial"] for c in r.certificates("listed")] == [1]
    assert w.run(w.platform.reconcile()) == []
    hub.engine.store.close()


def test_a_vote_cast_in_time_is_counted_even_if_signed_after_the_voting_end(w):
    g, engine = w.platform.gov, w.platform.engine
    w.run(g.genesis())
    for who in ("alice", "bob"):
        w.run(g.grant("g-" + who, who, 100))
        w.run(g.stake("s-" + who, who, 50, 10**6, wallet=w.signer(who)))
    w.run(g.propose("p1", "alice", "p_con", 5.0, 100, 200, wallet=w.signer("alice")))
    w.run(g.vote("v0", "alice", "p1", True, wallet=w.signer("alice")))
    request = w.run(g.vote("v1", "bob", "p1", False))  # cast before the end
    w.now += 101
    g.tick()
    assert g.proposals()[0]["status"] == "open"  # not counted while bob's vote is held
    signature = w.signer("bob").keypair.sign_message(base64.b64decode(request["message"]))
    w.run(engine.submit("v1", str(signature)))
    g.tick()
    (p,) = g.proposals()
    assert (p["status"], p["yes"], p["no"]) == ("rejected", 50, 50)  # a tie does not pass


def test_a_wallet_signs_only_the_command_it_was_given_for(w):
    r = w.platform.rec
    w.run(r.list("l1", "owner-101", [1], 400_000, wallet=w.signer("owner-101")))
    out = w.run(r.retire("x1", "owner-101", [2, 3], "the operator's idea"))  # no wallet
    assert out["status"] == "awaiting signature"
    assert r.certificates("retired") == []


@pytest.mark.parametrize("command", ["reward-%d" % EPOCH, "reward-%d.1" % EPOCH,
                                     "rec-vintage-2024", "nrg-genesis"])  # fmt: skip
def test_the_platform_s_own_command_ids_are_not_anyone_s(tmp_path, command):
    w = World(tmp_path)
    p = w.platform
    p.incentives.rules.update(RULES)
    fill(w)
    w.run(p.gov.genesis())
    w.now = EPOCH + EPOCH_S
    with pytest.raises(PlatformError, match="the platform's own"):
        w.run(p.credit.set_rate(command, 100))
    out = w.run(p.incentives.pay(EPOCH))
    assert out["rewards"] > 0 and out["paid"]
    assert all(r["paid_by"] for r in p.incentives.rewards(EPOCH))
    w.close()
