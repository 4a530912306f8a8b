"""`gridbid etp decode|encode`, run as a user runs it: a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text())


def gridbid(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "gridbid.cli", *args], input=stdin, capture_output=True, text=True
    )


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps({"keys": FRAMES["keys"], "group": FRAMES["group"]}))
    return str(path)


def assert_one_line_error(result, code, *words):
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr


def test_decode_prints_the_verified_message(key_file):
    vector = FRAMES["vectors"][3]  # a bid
    result = gridbid("etp", "decode", vector["frame"], "--key-file", key_file)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mode"] == "authenticated" and out["key_id"] == 7
    assert out["message"]["type"] == "bid"
    for name, value in vector["fields"].items():
        assert out["message"][name] == value


def test_decode_accepts_spaced_hex_and_stdin(key_file):
    spaced = " ".join(FRAMES["vectors"][0]["frame"][i : i + 2] for i in range(0, 248, 2))
    result = gridbid("etp", "decode", "-", "--key-file", key_file, stdin=spaced)
    assert result.returncode == 0 and json.loads(result.stdout)["group"] is True


def test_bad_frames_get_one_line_naming_the_fault(key_file):
    good = FRAMES["vectors"][3]["frame"]
    tampered = good[:60] + ("0" if good[60] != "0" else "1") + good[61:]
    assert_one_line_error(gridbid("etp", "decode", tampered, "--key-file", key_file), 1, "BadTag")
    assert_one_line_error(
        gridbid("etp", "decode", good[:-2], "--key-file", key_file), 1, "BadLength"
    )
    assert_one_line_error(gridbid("etp", "decode", "zz", "--key-file", key_file), 2, "not hex")
    expired = gridbid("etp", "decode", good, "--key-file", key_file, "--check-ttl")
    assert_one_line_error(expired, 1, "Expired")
    assert_one_line_error(gridbid("etp", "decode", good), 2, "--key-file")
    assert_one_line_error(
        gridbid("etp", "decode", good, "--key-file", "/nonexistent"), 2, "key file"
    )


def test_no_verify_and_raw_modes(tmp_path):
    vector = FRAMES["vectors"][3]
    result = gridbid("etp", "decode", vector["frame"], "--no-verify")
    assert result.returncode == 0 and json.loads(result.stdout)["mode"] == "unverified"
    hand = json.loads((VECTORS / "raw_by_hand.json").read_text())["fields_hex"]
    result = gridbid("etp", "decode", "".join(h for _n, h, _v in hand), "--raw")
    out = json.loads(result.stdout)["message"]
    assert out["type"] == "query_response" and out["battery_voltage"] == 52.0


def test_encode_then_decode_round_trips_exactly(key_file):
    vector = FRAMES["vectors"][5]
    decoded = gridbid("etp", "decode", vector["frame"], "--key-file", key_file).stdout
    # the file holds pair keys by peer: sealed with sender 7's, the frame is the vector's
    again = gridbid("etp", "encode", "-", "--key-file", key_file, "--to", "7", stdin=decoded)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == vector["frame"]
    built = gridbid(
        "etp", "encode", '{"type": "bid", "bid_price": 15.5, "required_energy_amount": 2, '
        '"message_id": 9, "ttl": 10}', "--key-file", key_file, "--key-id", "9", "--to", "9",
    )  # fmt: skip
    out = json.loads(gridbid("etp", "decode", built.stdout.strip(), "--key-file", key_file).stdout)
    assert out["key_id"] == 9 and out["message"]["bid_price"] == 15.5


def test_encode_reports_mistakes_in_one_line(key_file):
    cases = (
        ('{"type": "bid", "bid_price": -1}', "BadValue"),
        ('{"type": "offer"}', "UnknownType"),
        ("not json", "not JSON"),
        ('{"type": "bid"}', "--to"),  # the file holds two pair keys
    )
    for doc, word in cases:
        result = gridbid("etp", "encode", doc, "--key-file", key_file)
        assert result.returncode in (1, 2)
        assert_one_line_error(result, result.returncode, word)
    raw = gridbid("etp", "encode", '{"type": "terminate", "termination_code": 1}', "--raw")
    assert len(bytes.fromhex(raw.stdout.strip())) == 84


def test_world_readable_key_file_is_warned_about(key_file):
    Path(key_file).chmod(0o644)
    result = gridbid("etp", "decode", FRAMES["vectors"][3]["frame"], "--key-file", key_file)
    assert result.returncode == 0 and "chmod 600" in result.stderr
    assert FRAMES["keys"]["7"] not in result.stdout + result.stderr  # secrets never printed
