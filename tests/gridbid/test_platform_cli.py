"""`gridbid credit|rec|gov` as gridbid.cli runs them. Each call opens the store afresh
and, on LiteSVM, rebuilds the chain from the journal, so a clean reconcile after several
calls proves the replay too."""

import base64
import json

import pytest
from helpers.platform import BASE, World
from solders.keypair import Keypair

from gridbid.cli import main as gridbid

READS = {("credit", "balances"), ("rec", "show"), ("gov", "proposals"), ("gov", "rewards")}


PARTICIPANTS = None  # the fixture's participants' folder


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    w = World(tmp_path)
    monkeypatch.setitem(globals(), "PARTICIPANTS", w.participants)
    for i in range(3):
        w.contract(101, BASE + 60 * i, 1.0, 1.0)
    w.close()

    def call(*argv):
        options = ["--db", str(tmp_path / "hub.sqlite")]
        if tuple(argv[:2]) not in READS:  # a read has no wallet or chain options
            options += ["--keys", str(tmp_path / "wallets")]
        if tuple(argv[:2]) == ("rec", "mint"):
            options += ["--source", "101=solar"]
        code = gridbid([*argv, *options])
        out = capsys.readouterr()
        return code, (json.loads(out.out) if out.out.strip() else None), out.err

    return call


def own(name):
    """--wallet: the participant's own file (tests/helpers/platform.py World.signer)."""
    return ["--wallet", str(PARTICIPANTS / ("%s.json" % name))]


def test_cli_round_trip_with_replayed_chain(cli):
    assert cli("credit", "rate", "100", "--id", "r1")[0] == 0
    code, out, _ = cli("credit", "buy", "alice", "1000", "--id", "b1")
    assert code == 0 and out["units"] == 10_000_000
    code, _, err = cli("credit", "buy", "alice", "1000", "--id", "b1")
    assert code == 1 and "already applied" in err
    code, _, err = cli("credit", "buy", "alice", "1000")
    assert code == 1 and "--id" in err
    code, out, _ = cli("rec", "mint", "--id", "m1")
    assert code == 0 and out[0]["serials"] == [1, 2, 3]
    assert (
        cli("rec", "list", "owner-101", "1,2", "2000000", "--id", "l1", *own("owner-101"))[0] == 0
    )
    assert cli("rec", "buy", "alice", "1", "--id", "x0", *own("alice"))[0] == 0
    code, out, _ = cli("rec", "retire", "alice", "1", "--reason", "2023 report", "--id", "x1",
                       *own("alice"))  # fmt: skip
    assert code == 0 and out["memo"].startswith("gridbid-rec:retire:x1:2023:1:")
    code, _, err = cli("rec", "retire", "alice", "1", "--id", "x2", *own("alice"))
    assert code == 1 and "certificate 1 is retired" in err
    code, _, err = cli("rec", "unlist", "owner-101", "2", "--id", "u0", *own("bob"))
    assert code == 1 and "must be signed by" in err  # another's wallet: nothing planned
    assert cli("gov", "genesis")[0] == 0
    assert cli("gov", "grant", "bob", "100", "--id", "g1")[0] == 0
    assert cli("gov", "stake", "bob", "60", "--id", "s1", *own("bob"))[0] == 0
    assert cli("gov", "propose", "bob", "slot_s", "600", "--id", "p1", *own("bob"))[0] == 0
    code, _, err = cli("gov", "vote", "alice", "p1", "yes", "--id", "v0", *own("alice"))
    assert code == 1 and "alice has no stake" in err
    assert cli("gov", "vote", "bob", "p1", "yes", "--id", "v1", *own("bob"))[0] == 0
    code, out, _ = cli("gov", "proposals")
    assert out[0]["param"] == "slot_s" and out[0]["status"] == "open"
    code, out, _ = cli("credit", "reconcile")
    assert (code, out) == (0, {"reconciled": True})
    code, out, _ = cli("credit", "balances")
    assert sorted(out.values()) == [2_000_000, 8_000_000]
    code, out, _ = cli("rec", "show", "--status", "listed")
    assert [c["serial"] for c in out] == [2]
    code, out, _ = cli("gov", "reward", str(BASE))  # an ended epoch with nothing to reward
    assert code == 0 and out == {"rewards": 0, "paid": []}
    code, _, err = cli("gov", "reward", "4102444800")  # 2100: not ended
    assert code == 1 and "not ended" in err


def test_wallet_files_are_0600_and_no_secret_is_printed(cli, tmp_path, capsys):
    import os
    import stat

    assert cli("credit", "rate", "100", "--id", "r1")[0] == 0
    code, out, err = cli("credit", "buy", "alice", "1000", "--id", "b1")
    files = sorted((tmp_path / "wallets").rglob("*.json"))
    assert {f.name for f in files} >= {"platform-authority.json", "mint.json", "accounts.json"}
    # The hub's folder holds no participant's key: its address book, public keys only.
    assert "alice.json" not in {f.name for f in files}
    book = json.loads((tmp_path / "wallets" / "accounts.json").read_text())
    assert out["owner"] == book["alice"] and len(book["alice"]) in range(32, 45)
    for f in files:
        if f.name not in ("owners.json", "accounts.json"):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
            keypair = Keypair.from_bytes(bytes(json.loads(f.read_text())))
            shown = json.dumps(out) + err
            assert str(keypair) not in shown and bytes(keypair)[:32].hex() not in shown


def test_a_participant_signs_on_its_own_machine(cli, tmp_path, capsys):
    """Without --wallet a participant's command prints a signing request; `gridbid wallet
    sign` signs it where the key lives (no hub file read), `gridbid wallet submit` runs it.
    A signature by anyone else, or altered, is refused and nothing moves."""
    assert cli("credit", "rate", "100", "--id", "r1")[0] == 0
    assert cli("credit", "buy", "alice", "1000", "--id", "b1")[0] == 0
    code, request, _ = cli("credit", "redeem", "alice", "4000000", "--id", "d1")
    assert code == 0 and request["status"] == "awaiting signature"
    assert (
        request["signer"]
        == json.loads((tmp_path / "wallets" / "accounts.json").read_text())["alice"]
    )
    code, listed, _ = cli("wallet", "requests")
    assert [r["command"] for r in listed] == ["d1"]
    (tmp_path / "request.json").write_text(json.dumps(request))

    def sign(name):
        code = gridbid(["wallet", "sign", str(tmp_path / "request.json"), *own(name)])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = sign("bob")  # not bob's to sign: the tool refuses
    assert code == 2 and "for %s to sign" % request["signer"] in err
    code, out, err = sign("alice")
    assert code == 0 and "memo: gridbid-credit:redemption:d1:alice:4000000" in err
    signed = json.loads(out)
    bad = dict(signed, signature=sign_with(PARTICIPANTS / "bob.json", request))
    for forged, why in ((bad, "not %s's signature" % request["signer"]),
                        (dict(signed, signature="1" * 88), "not")):  # fmt: skip
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        code, _, err = cli("wallet", "submit", str(tmp_path / "forged.json"))
        assert code == 1 and why in err, err
    code, out, _ = cli("credit", "balances")
    assert out[request["signer"]] == 10_000_000  # nothing burned yet
    (tmp_path / "signed.json").write_text(json.dumps(signed))
    code, out, _ = cli("wallet", "submit", str(tmp_path / "signed.json"))
    assert code == 0 and out["units"] == 4_000_000 and out["fiat"] == 400
    code, _, err = cli("wallet", "submit", str(tmp_path / "signed.json"))
    assert code == 1 and "already applied" in err
    assert cli("wallet", "requests")[1] == []
    code, out, _ = cli("credit", "reconcile")
    assert (code, out) == (0, {"reconciled": True})
    assert cli("credit", "balances")[1][request["signer"]] == 6_000_000


def sign_with(path, request):
    import base64

    from hub.integrations.settlement import wallets

    message = base64.b64decode(request["message"])
    return str(wallets.read(path).keypair.sign_message(message))


def test_wallet_new_makes_a_0600_file_and_prints_its_public_key_only(tmp_path, capsys):
    import os
    import stat

    path = tmp_path / "me.json"
    assert gridbid(["wallet", "new", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    keypair = Keypair.from_bytes(bytes(json.loads(path.read_text())))
    assert printed == str(keypair.pubkey())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert gridbid(["wallet", "new", str(path)]) == 2  # never replaced
    assert "never replaced" in capsys.readouterr().err
    assert Keypair.from_bytes(bytes(json.loads(path.read_text()))) == keypair


def _raw(carol, kind):
    """Hand-made messages (legacy wire form) a real request never is."""
    key, zero = bytes(carol.pubkey()), b"\x00" * 32
    if kind == "program index out of range":
        return b"\x01\x00\x00" + b"\x01" + key + zero + b"\x01\x05\x00\x00"
    if kind == "more signers than keys":
        return b"\x05\x00\x00" + b"\x01" + key + zero + b"\x00"
    # "account index out of range"
    return b"\x01\x00\x00" + b"\x02" + key + zero + zero + b"\x01\x00\x01\x09\x00"


@pytest.mark.parametrize("request_text", [
    "not json", "[]", '{"message": 5, "command": "x", "signer": "y"}',
    '{"message": "!!!", "command": "x", "signer": "y"}',
    "program index out of range", "more signers than keys", "account index out of range",
])  # fmt: skip
def test_wallet_sign_refuses_what_is_not_a_request_in_one_line(tmp_path, capsys, request_text):
    carol = Keypair()
    wallet = tmp_path / "carol.json"
    wallet.write_text(json.dumps(list(bytes(carol))))
    wallet.chmod(0o600)
    if not request_text.startswith(("{", "[", "not")):
        message = base64.b64encode(_raw(carol, request_text)).decode()
        request_text = json.dumps({"message": message, "command": "x",
                                   "signer": str(carol.pubkey())})  # fmt: skip
    (tmp_path / "request.json").write_text(request_text)
    code = gridbid(["wallet", "sign", str(tmp_path / "request.json"), "--wallet", str(wallet)])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and out.err.count("\n") == 1, out
    assert out.err.startswith("error: ")
