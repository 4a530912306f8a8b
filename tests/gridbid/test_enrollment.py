"""Enrollment and revocation as an owner and an aggregator do them: `gridbid aggregator
new|enroll` on the aggregator's machine, `gridbid device trust|revoke` on the owner's,
one file moved between them. Real commands; the firmware's own config check reads the
result. (A running battery following its config is tested with the firmware:
tests/firmware/test_firmware_integration.py.)"""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import config as firmware_config  # firmware/config.py (conftest puts firmware/ on the path)
from solders.keypair import Keypair

from protocol import auth, pairing

ROOT = Path(__file__).resolve().parents[2]
HEX_KEY = re.compile(r"[0-9a-f]{32,}")


def gridbid(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "gridbid.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def battery_config(folder, device_id=1001):
    """A battery's config.json as `gridbid hub keys` leaves it: no aggregator trusted."""
    data = json.loads((ROOT / "firmware" / "config.example.json").read_text())
    data.update(device_id=device_id, key_id=device_id, keys={}, group="ab" * 32)
    path = folder / ("battery-%d.json" % device_id)
    path.touch(mode=0o600)
    path.write_text(json.dumps(data))
    return path


def test_an_owner_trusts_and_revokes_an_aggregator_and_no_secret_is_printed(tmp_path):
    agg, owner = tmp_path / "acme", tmp_path / "owner"
    agg.mkdir(), owner.mkdir()
    code, out = gridbid("aggregator", "new", "--id", 2, "--name", "acme", "--out",
                        "acme.json", "--wallet", "acme-wallet.json", cwd=agg)  # fmt: skip
    assert code == 0 and "aggregator 2 (acme)" in out, out
    said = [out]
    identity = json.loads((agg / "acme.json").read_text())
    assert stat.S_IMODE((agg / "acme.json").stat().st_mode) == 0o600
    wallet = json.loads((agg / "acme-wallet.json").read_text())  # its own, solana-keygen's
    assert stat.S_IMODE((agg / "acme-wallet.json").stat().st_mode) == 0o600 and len(wallet) == 64
    secret = str(Keypair.from_bytes(bytes(wallet)))  # solders shows a keypair's secret
    assert "its wallet" in out and secret not in out and bytes(wallet[:32]).hex() not in out
    assert str(Keypair.from_bytes(bytes(wallet)).pubkey()) in out  # its public key only
    code, out = gridbid("aggregator", "new", "--id", 2, "--name", "acme", "--out",
                        "acme.json", cwd=agg)  # fmt: skip
    assert code == 2 and "exists" in out, "an identity is never made over another"
    assert json.loads((agg / "acme.json").read_text()) == identity

    code, out = gridbid("aggregator", "enroll", "--identity", "acme.json", "--battery", 1001,
                        "--battery", 1002, cwd=agg)  # fmt: skip
    assert code == 0, out
    said.append(out)
    enrollment = agg / "enroll-2-1001.json"
    assert stat.S_IMODE(enrollment.stat().st_mode) == 0o600
    pair = pairing.derive(bytes.fromhex(identity["master"]), pairing.LABEL_ETP, 1001)
    assert json.loads(enrollment.read_text())["key"] == pair.hex()

    config = battery_config(owner)
    (owner / "from-acme.json").write_bytes(enrollment.read_bytes())  # out of band
    os.chmod(owner / "from-acme.json", 0o600)
    code, out = gridbid("device", "trust", "--config", config, "from-acme.json", cwd=owner)
    assert code == 0 and "battery 1001 now trusts aggregator 2 (acme)" in out, out
    said.append(out)
    cfg = firmware_config.check(json.loads(config.read_text()))
    assert cfg["keyring"].get(2).tag(b"x") == auth.HmacKey(pair).tag(b"x")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert identity["master"] not in config.read_text()  # the battery holds its pair key only

    # battery 1002's enrollment does not fit battery 1001
    code, out = gridbid("device", "trust", "--config", config, agg / "enroll-2-1002.json",
                        cwd=owner)  # fmt: skip
    assert code == 2 and "enrolls battery 1002" in out and len(out.strip().splitlines()) == 1

    code, out = gridbid("device", "revoke", "--config", config, "--aggregator", 2, cwd=owner)
    assert code == 0 and "no longer trusts aggregator 2" in out, out
    said.append(out)
    assert firmware_config.check(json.loads(config.read_text()))["keyring"].get(2) is None
    code, out = gridbid("device", "revoke", "--config", config, "--aggregator", 2, cwd=owner)
    assert code == 2 and "does not trust aggregator 2" in out
    assert not any(HEX_KEY.search(x) for x in said), "a secret was printed"


def test_bad_files_are_refused_in_one_line_and_change_nothing(tmp_path):
    config = battery_config(tmp_path)
    before = config.read_bytes()
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"kind": "gridbid-enrollment/1", "aggregator": 2,
                                 "battery": 1001, "key": "11" * 32}))  # fmt: skip
    os.chmod(loose, 0o644)
    not_one = tmp_path / "other.json"
    not_one.touch(mode=0o600)
    not_one.write_text(json.dumps({"id": 2, "name": "acme", "master": "22" * 32}))
    for args, fault in (
        (("trust", "--config", config, loose), "readable by others: chmod 600"),
        (("trust", "--config", config, not_one), "is not an enrollment file"),
        (("trust", "--config", config, tmp_path / "none.json"), "no enrollment"),
        (("trust", "--config", tmp_path / "none.json", not_one), "no battery config"),
    ):
        code, out = gridbid("device", *args, cwd=tmp_path)
        assert code == 2 and fault in out and len(out.strip().splitlines()) == 1, (args, out)
    assert config.read_bytes() == before
    code, out = gridbid("aggregator", "enroll", "--identity", not_one, "--battery", 0,
                        cwd=tmp_path)  # fmt: skip
    assert code == 2 and "battery ids are 1..2^32-1" in out, out
    assert not list(tmp_path.glob("enroll-*"))
