"""HMAC, keyrings and the replay window — on CPython and on the MicroPython VM."""

from checks import raises, unhex

from protocol import auth, errors, pairing

# RFC 4231 HMAC-SHA-256 test cases 1, 5 and 6 (first 16 bytes: our tag size).
RFC4231 = (
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b"),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f",
    ),
)


def test_hmac_matches_rfc4231():
    for secret, data, expected in RFC4231:
        assert auth.HmacKey(secret).tag(data) == unhex(expected), expected


def test_hmac_key_is_reusable_and_accepts_memoryview():
    key = auth.HmacKey(b"\x0b" * 20)
    first = key.tag(b"Hi There")
    assert key.tag(memoryview(b"xxHi There")[2:]) == first
    assert key.tag(b"Hi There!") != first
    assert key.tag(b"Hi There") == first


def test_short_keys_are_refused_and_secrets_never_printed():
    raises(ValueError, auth.HmacKey, b"short")
    raises(ValueError, auth.HmacKey, "a str is not a key")
    key = auth.HmacKey(b"\x42" * 32)
    assert "42" not in repr(key) and "hidden" in repr(key)


def test_keyring_from_key_file_content():
    ring = auth.Keyring.from_json({"keys": {"7": "11" * 32}, "group": "22" * 32})
    assert 7 in ring and len(ring) == 1 and ring.group is not None
    assert ring.get(7).tag(b"x") == auth.HmacKey(b"\x11" * 32).tag(b"x")
    assert ring.get(8) is None
    raises(ValueError, auth.Keyring.from_json, {"keys": {"seven": "11" * 32}})
    raises(ValueError, auth.Keyring.from_json, {"keys": {"7": "zz"}})
    raises(ValueError, auth.Keyring.from_json, ["not", "an", "object"])
    raises(ValueError, auth.Keyring({}).add, 2**32, b"k" * 16)


def test_replay_window_accepts_each_id_once_in_any_order_within_window():
    guard = auth.ReplayGuard()
    for mid in (100, 105, 101, 103, 170, 110):
        guard.admit(1, mid, 0)
    for mid in (100, 105, 170, 110):
        raises(errors.Replay, guard.admit, 1, mid, 0)
    raises(errors.Replay, guard.admit, 1, 170 - auth.WINDOW, 0)  # fell out of the window
    guard.admit(1, 170 - auth.WINDOW + 1, 0)  # still inside, never seen
    guard.admit(2, 100, 0)  # windows are per sender
    assert guard.marks() == {1: 170, 2: 100}


def test_replay_window_survives_a_big_jump():
    guard = auth.ReplayGuard()
    guard.admit(1, 5, 0)
    guard.admit(1, 5 + 10**12, 0)
    raises(errors.Replay, guard.admit, 1, 5, 0)
    guard.admit(1, 4 + 10**12, 0)


def test_restored_marks_refuse_everything_at_or_below_them():
    guard = auth.ReplayGuard()
    guard.restore({1: 1000})
    raises(errors.Replay, guard.admit, 1, 1000, 0)
    raises(errors.Replay, guard.admit, 1, 999, 0)
    guard.admit(1, 1001, 0)


def test_replay_table_is_bounded_and_eviction_stays_safe():
    guard = auth.ReplayGuard(max_senders=4)
    for sender in range(10):
        guard.admit(sender, 1, 1000 + sender)  # sender n last heard at 1000 + n
    assert len(guard.marks()) == 4
    assert guard.evicted_ms == 1005  # sender 5 was the newest dropped
    # A dropped sender's old frame could be a replay: refused.
    raises(errors.Replay, guard.admit, 0, 1, 1000)
    # Frames sent after the last eviction are fine, for new and dropped senders.
    guard.admit(0, 2, 1006)
    guard.admit(99, 1, 1007)


def test_frames_sent_before_a_reboot_are_refused_after_it():
    guard = auth.ReplayGuard(not_before_ms=5000)  # booted at t = 5 s
    raises(errors.Replay, guard.admit, 1, 10, 4999)  # possibly seen before the reboot
    guard.admit(1, 11, 5000)


def test_pair_keys_are_derived_as_documented():
    # HMAC-SHA256(master, label || peer id as 4 bytes big-endian), whole: checked against
    # Python's hmac module (hmac.new(b"m" * 32, b"gridbid/etp/v1" + (1001).to_bytes(4,
    # "big"), sha256)) once, here as a known answer both runtimes must give.
    want = unhex("b450ad4b7da452c41afaf8a3553ca538bde51eb78a71d1ffc2d990a63d801167")
    assert pairing.derive(b"m" * 32, pairing.LABEL_ETP, 1001) == want
    assert pairing.derive(auth.HmacKey(b"m" * 32), pairing.LABEL_ETP, 1001) == want
    # another label, peer or master: another key
    others = (pairing.derive(b"m" * 32, pairing.LABEL_COAP, 1001),
              pairing.derive(b"m" * 32, pairing.LABEL_ETP, 1002),
              pairing.derive(b"n" * 32, pairing.LABEL_ETP, 1001))  # fmt: skip
    assert want not in others and len(set(others)) == 3
    raises(ValueError, pairing.derive, b"m" * 32, pairing.LABEL_ETP, 2**32)


def test_derived_keyring_gives_each_peer_its_pair_key_and_stays_bounded():
    ring = pairing.DerivedKeyring(b"m" * 32, pairing.LABEL_ETP, group=b"g" * 32, cache=2)
    for peer in (1001, 1002, 1003, 1001):
        assert ring.get(peer).tag(b"x") == auth.HmacKey(
            pairing.derive(b"m" * 32, pairing.LABEL_ETP, peer)
        ).tag(b"x")
    assert len(ring._cache) == 2  # ids past the cache are derived again, never kept
    assert ring.get(2**32) is None and ring.group is not None
    assert "6d6d" not in repr(ring) and "hidden" in repr(ring)


def test_a_revoked_peer_has_no_key():
    ring = auth.Keyring({7: b"\x11" * 32, 8: b"\x22" * 32})
    ring.remove(7)
    assert ring.get(7) is None and 7 not in ring and list(ring) == [8]
