"""Participants sign their own platform commands (hub/integrations/platform/engine.py, "Who
signs"): the platform's keys sign only the operator's, on LiteSVM running the real SPL
Token, ATA and Memo programs with a real SQLite store."""

import base64
import time

import pytest
from solders.message import Message
from solders.transaction import Transaction

from hub.integrations.platform import signing
from hub.integrations.platform.chain_ops import RESERVED
from hub.integrations.platform.engine import PlatformError


@pytest.fixture
def w(minted):  # conftest.py: certificates 1..3 minted, carol holding credits
    return minted


def landed(w, command):
    """The transaction of `command` as the chain holds it."""
    (raw,) = w.store.db.conn.execute(
        "SELECT raw FROM platform_txs WHERE command = ? AND status = 'finalized'", (command,)
    ).fetchone()
    return Transaction.from_bytes(raw)


def test_the_hub_s_folder_holds_no_participant_key(w, tmp_path):
    """Every wallet file in the platform's folder is one of its own keys; a participant's
    name gets no wallet there, and a participant's command is signed by its own."""
    own = {p.stem for p in (tmp_path / "wallets").glob("*.json")} - {"accounts", "owners"}
    assert own and all(name.startswith(RESERVED) for name in own), own
    with pytest.raises(PlatformError, match="holds no key of 'carol'"):
        w.keys.wallet("carol")
    r = w.platform.rec
    w.run(r.list("l1", "owner-101", [1], 400_000, wallet=w.signer("owner-101")))
    w.run(r.buy("b1", "carol", [1], wallet=w.signer("carol")))
    tx = landed(w, "b1")
    signers = tx.message.account_keys[: tx.message.header.num_required_signatures]
    assert set(map(str, signers)) == {str(w.keys.authority.pubkey), str(w.key("carol"))}
    tx.verify()  # carol's signature is carol's
    assert own == {p.stem for p in (tmp_path / "wallets").glob("*.json")} - {"accounts", "owners"}


def test_an_unlist_and_a_vote_carry_the_participant_s_own_signed_memo(w):
    """Even where the platform's key moves the tokens (the escrow gives a listing back),
    the participant's signature on the memo is what asks for it."""
    r = w.platform.rec
    w.run(r.list("l1", "owner-101", [2], 400_000, wallet=w.signer("owner-101")))
    with pytest.raises(PlatformError, match="must be signed by"):
        w.run(r.unlist("u0", "owner-101", [2], wallet=w.signer("carol")))
    assert w.platform.engine.command("u0") is None  # refused before anything was kept
    w.run(r.unlist("u1", "owner-101", [2], wallet=w.signer("owner-101")))
    memos = [x.memo or "" for x in w.chain.signatures_for_address(w.key("owner-101"))]
    assert any("gridbid-rec:unlist:u1:" in m for m in memos)
    # A participant's wallet does not sign the operator's commands.
    args = {"account": "carol", "fiat": 100}
    with pytest.raises(PlatformError, match="operator's command"):
        w.run(w.platform.engine.run("c2", "credit.purchase", args, w.signer("carol")))


def test_a_request_is_signed_elsewhere_and_submitted(w):
    r, engine = w.platform.rec, w.platform.engine
    request = w.run(r.list("l1", "owner-101", [1, 2], 400_000))
    assert request["status"] == "awaiting signature"
    assert request["signer"] == str(w.key("owner-101"))
    assert engine.requests() == [request]
    # What it takes is held: another command on certificate 2 waits for this one.
    with pytest.raises(PlatformError, match="certificate 2 is taken by command 'l1'"):
        w.run(r.retire("x1", "owner-101", [2], "", wallet=w.signer("owner-101")))
    message = base64.b64decode(request["message"])
    forged = w.signer("carol").keypair.sign_message(message)
    with pytest.raises(PlatformError, match="not .*'s signature"):
        w.run(engine.submit("l1", str(forged)))
    assert r.certificates("listed") == []  # nothing moved
    signature = w.signer("owner-101").keypair.sign_message(message)
    out = w.run(engine.submit("l1", str(signature)))
    assert out["serials"] == [1, 2]
    assert [c["serial"] for c in r.certificates("listed")] == [1, 2]
    assert str(landed(w, "l1").message) == str(Message.from_bytes(message))
    with pytest.raises(PlatformError, match="already applied"):
        w.run(engine.submit("l1", str(signature)))
    # Done: the hold is gone.
    w.run(r.unlist("u1", "owner-101", [2], wallet=w.signer("owner-101")))
    assert w.run(w.platform.reconcile()) == []


def test_a_request_left_unsigned_past_its_time_fails_and_releases(w, monkeypatch):
    r, engine = w.platform.rec, w.platform.engine
    w.run(r.list("l1", "owner-101", [1], 400_000, wallet=w.signer("owner-101")))
    request = w.run(r.buy("b1", "carol", [1]))
    assert request["expires_at"] == pytest.approx(time.time() + signing.REQUEST_S, abs=5)
    message = base64.b64decode(request["message"])
    late = w.signer("carol").keypair.sign_message(message)
    monkeypatch.setattr(signing, "REQUEST_S", -1.0)  # its minute has passed
    with pytest.raises(PlatformError, match="did not sign it within"):
        w.run(engine.submit("b1", str(late)))  # too late: refused, nothing sent
    assert engine.command("b1")["status"] == "failed"
    assert w.store.db.conn.execute("SELECT count(*) FROM platform_txs WHERE command = 'b1'"
                                   ).fetchone()[0] == 0  # fmt: skip
    assert engine.requests() == []
    with pytest.raises(PlatformError, match="already failed"):
        w.run(engine.submit("b1", str(late)))
    monkeypatch.setattr(signing, "REQUEST_S", 60.0)
    # Released: the certificate can be bought again, under a new id.
    out = w.run(r.buy("b2", "carol", [1], wallet=w.signer("carol")))
    assert out["serials"] == [1]
    assert w.run(w.platform.reconcile()) == []


def test_an_expired_transaction_without_its_wallet_fails_unmoved(w):
    """A participant's signed transaction that never landed is not signed again by the
    hub (it cannot): once provably dead, the command fails and nothing has moved."""
    r, engine = w.platform.rec, w.platform.engine
    request = w.run(r.list("l1", "owner-101", [3], 400_000))
    message = base64.b64decode(request["message"])
    signature = w.signer("owner-101").keypair.sign_message(message)
    sent = w.chain.send

    def lost(tx):  # the cluster drops it
        return Transaction.from_bytes(bytes(tx)).signatures[0], "dropped", False

    w.chain.send = lost
    with pytest.raises(PlatformError):
        w.run(engine.submit("l1", str(signature)))
    w.chain.send = sent
    w.chain.new_block(w.chain.valid_blocks + 1)
    w.run(engine.resume())
    row = engine.command("l1")
    assert row["status"] == "failed" and "signs it again, under a new id" in row["error"]
    assert r.certificates("listed") == []
    assert w.run(w.platform.reconcile()) == []


def test_the_hub_s_resume_fails_a_request_left_unsigned(w, monkeypatch):
    r, engine = w.platform.rec, w.platform.engine
    w.run(r.retire("x1", "owner-101", [3], "scope 2"))  # a request, never signed
    w.run(engine.resume())
    assert engine.command("x1")["status"] == "pending"  # still within its minute
    monkeypatch.setattr(signing, "REQUEST_S", -1.0)
    w.run(engine.resume())
    assert engine.command("x1")["status"] == "failed" and engine.requests() == []
    # released: certificate 3 can be retired by a new command
    monkeypatch.setattr(signing, "REQUEST_S", 60.0)
    w.run(r.retire("x2", "owner-101", [3], "scope 2", wallet=w.signer("owner-101")))
    assert w.run(w.platform.reconcile()) == []
