"""`gridbid credit|rec|gov` as gridbid.cli runs them. Each call opens the store afresh
and, on LiteSVM, rebuilds the chain from the journal, so a clean reconcile after several
calls proves the replay too."""

import json

import pytest
from helpers.platform import BASE, World
from solders.keypair import Keypair

from gridbid.cli import main as gridbid

READS = {("credit", "balances"), ("rec", "show"), ("gov", "proposals"), ("gov", "rewards")}


@pytest.fixture
def cli(tmp_path, capsys):
    w = World(tmp_path)
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
    assert cli("rec", "list", "owner-101", "1,2", "2000000", "--id", "l1")[0] == 0
    assert cli("rec", "buy", "alice", "1", "--id", "x0")[0] == 0
    code, out, _ = cli("rec", "retire", "alice", "1", "--reason", "2023 report", "--id", "x1")
    assert code == 0 and out["memo"].startswith("gridbid-rec:retire:x1:2023:1:")
    code, _, err = cli("rec", "retire", "alice", "1", "--id", "x2")
    assert code == 1 and "certificate 1 is retired" in err
    assert cli("gov", "genesis")[0] == 0
    assert cli("gov", "grant", "bob", "100", "--id", "g1")[0] == 0
    assert cli("gov", "stake", "bob", "60", "--id", "s1")[0] == 0
    assert cli("gov", "propose", "bob", "slot_s", "600", "--id", "p1")[0] == 0
    code, _, err = cli("gov", "vote", "alice", "p1", "yes", "--id", "v0")
    assert code == 1 and "alice has no stake" in err
    assert cli("gov", "vote", "bob", "p1", "yes", "--id", "v1")[0] == 0
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
    assert {f.name for f in files} >= {"platform-authority.json", "alice.json", "mint.json"}
    for f in files:
        if f.name != "owners.json":
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
            keypair = Keypair.from_bytes(bytes(json.loads(f.read_text())))
            shown = json.dumps(out) + err
            assert str(keypair) not in shown and bytes(keypair)[:32].hex() not in shown
