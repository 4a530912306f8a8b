"""Authenticated frames and stream framing — on CPython and on the MicroPython VM."""

from checks import raises, unhex, vectors

from protocol import auth, errors, frame, message, pairing

NOW = 1763700000000


def ring(data):
    keys = {}
    for key_id, secret in data["keys"].items():
        keys[int(key_id)] = unhex(secret)
    return auth.Keyring(keys, group=unhex(data["group"]))


def pair():
    """Codecs of nodes 1 and 2, which share one pair key (and the group key)."""
    ab = b"a" * 32
    return (
        frame.Codec(auth.Keyring({2: ab}, group=b"g" * 32), key_id=1, peer=2),
        frame.Codec(auth.Keyring({1: ab}, group=b"g" * 32), key_id=2, peer=1),
        message.MessageIds(NOW),
    )


def test_golden_frames_decode_and_reencode_identically():
    data = vectors("frames.json")
    for v in data["vectors"]:
        codec = frame.Codec(ring(data), key_id=v["key_id"])
        got = codec.open(unhex(v["frame"]), v["sent_ms"])
        assert (got.key_id, got.group, got.sent_ms, got.reply_to) == (
            v["key_id"], v["group"], v["sent_ms"], v["reply_to"]
        ), v["name"]  # fmt: skip
        for name, value in v["fields"].items():
            assert getattr(got.message, name) == value, (v["name"], name)
        # The vectors' keys are pair keys with their sender: sealing for it gives the frame.
        again = codec.seal(got.message, v["sent_ms"], reply_to=v["reply_to"], group=v["group"],
                           to=v["key_id"])  # fmt: skip
        assert again == unhex(v["frame"]), v["name"]


def test_golden_rejects_raise_their_own_error():
    data = vectors("rejects.json")
    for v in data["vectors"]:
        codec = frame.Codec(ring(data), key_id=7)
        raw = unhex(v["frame"])
        if v.get("open_first"):
            codec.open(raw, v["now_ms"])
        err = raises(getattr(errors, v["error"]), codec.open, raw, v["now_ms"])
        assert type(err).__name__ == v["error"], (v["name"], type(err).__name__)


def test_wrong_key_and_unknown_sender():
    a, _b, ids = pair()
    stranger = frame.Codec(auth.Keyring({1: b"x" * 32}), key_id=1)
    data = a.seal(message.bid(ids.next(), 5, 15.0, 1.0), NOW)
    raises(errors.BadTag, stranger.open, data, NOW)
    nobody = frame.Codec(auth.Keyring({3: b"c" * 32}), key_id=3)
    raises(errors.UnknownKey, nobody.open, data, NOW)


def test_a_pair_key_binds_the_receiver_too():
    # Node 1 shares a key with 2 and another with 3: a frame sealed for 2, replayed at
    # 3, fails its tag (3 holds 1's pair key with 3, not with 2), and 1 cannot seal for
    # a node it holds no pair key with.
    ids = message.MessageIds(NOW)
    one = frame.Codec(auth.Keyring({2: b"a" * 32, 3: b"c" * 32}), key_id=1)
    two = frame.Codec(auth.Keyring({1: b"a" * 32}), key_id=2)
    three = frame.Codec(auth.Keyring({1: b"c" * 32}), key_id=3)
    for_two = one.seal(message.bid(ids.next(), 2, 15.0, 1.0), NOW, to=2)
    raises(errors.BadTag, three.open, for_two, NOW)
    assert two.open(for_two, NOW).message.device_id == 2
    assert three.open(one.seal(message.bid(ids.next(), 3, 15.0, 1.0), NOW, to=3), NOW).key_id == 1
    raises(errors.UnknownKey, one.seal, message.bid(ids.next(), 4, 15.0, 1.0), NOW, to=4)
    raises(errors.UnknownKey, one.seal, message.bid(ids.next(), 4, 15.0, 1.0), NOW)  # nobody
    # 2's answer reflected back at 2 names 2 as its sender: 2 holds no key for itself
    answer = two.seal(message.bid_reject(ids.next(), 2, 15.0, 14.0, 1), NOW, to=1)
    raises(errors.UnknownKey, two.open, answer, NOW)


def test_derived_pair_keys_meet_the_keys_peers_were_given():
    # An aggregator derives its pair key with any battery from its master secret; the
    # battery holds just that key (enrollment), and the two talk.
    master = b"m" * 32
    aggregator = frame.Codec(pairing.DerivedKeyring(master, pairing.LABEL_ETP), key_id=7)
    battery = frame.Codec(
        auth.Keyring({7: pairing.derive(master, pairing.LABEL_ETP, 1001)}), key_id=1001, peer=7
    )
    ids = message.MessageIds(NOW)
    got = battery.open(aggregator.seal(message.bid(ids.next(), 1001, 15.0, 1.0), NOW, to=1001), NOW)
    assert got.key_id == 7
    back = aggregator.open(
        battery.seal(message.bid_reject(ids.next(), 1001, 15.0, 14.0, 1), NOW), NOW
    )
    assert back.key_id == 1001
    # the same frame means nothing to battery 1002, given its own pair key
    given = pairing.derive(master, pairing.LABEL_ETP, 1002)
    other = frame.Codec(auth.Keyring({7: given}), key_id=1002)
    for_1001 = aggregator.seal(message.bid(ids.next(), 1001, 15.0, 1.0), NOW, to=1001)
    raises(errors.BadTag, other.open, for_1001, NOW)


def test_every_single_bit_flip_is_caught():
    a, b, ids = pair()
    data = a.seal(message.bid(ids.next(), 5, 15.0, 1.0), NOW)
    for i in range(0, len(data) * 8, 7):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        raises(errors.ETPError, b.open, bytes(bad), NOW)
    assert b.open(data, NOW).message.bid_price == 15.0  # the original still opens


def test_ttl_window_is_exact():
    a, b, ids = pair()
    msg = message.bid(ids.next(), 5, 15.0, 1.0, ttl=3)
    last_ok = NOW + 3000 + frame.SKEW_MS
    raises(errors.Expired, b.open, a.seal(msg, NOW), last_ok + 1)
    assert b.open(a.seal(msg, NOW), last_ok).message == msg
    msg = message.bid(ids.next(), 5, 15.0, 1.0, ttl=0)
    raises(errors.Expired, b.open, a.seal(msg, NOW), NOW - frame.SKEW_MS - 1)
    assert b.open(a.seal(msg, NOW), NOW - frame.SKEW_MS).message == msg


def test_replays_are_refused_but_reordering_is_not():
    a, b, ids = pair()
    frames = [a.seal(message.bid(ids.next(), 5, 15.0 + i, 1.0), NOW) for i in range(5)]
    for i in (0, 3, 1, 4, 2):
        b.open(frames[i], NOW)
    for data in frames:
        raises(errors.Replay, b.open, data, NOW)


def test_a_failed_frame_does_not_move_the_replay_window():
    a, b, ids = pair()
    early = a.seal(message.bid(ids.next(), 5, 15.0, 1.0), NOW)
    later = bytearray(a.seal(message.bid(ids.next() + 10**6, 5, 15.0, 1.0), NOW))
    later[-1] ^= 1
    raises(errors.BadTag, b.open, bytes(later), NOW)
    assert b.open(early, NOW).message.bid_price == 15.0


def test_group_frames_use_the_group_key_and_their_own_window():
    a, b, ids = pair()
    msg = message.query(ids.next(), 0, 2.0)
    data = a.seal(msg, NOW, group=True)
    got = b.open(data, NOW)
    assert got.group and got.key_id == 1 and got.message == msg
    outsider = frame.Codec(auth.Keyring({1: b"a" * 32}), key_id=2)  # no group key
    raises(errors.UnknownKey, outsider.open, data, NOW)
    # the same message_id on the unicast channel is a different window
    assert b.open(a.seal(msg, NOW), NOW).group is False


def test_sealing_refuses_header_values_outside_their_widths():
    a, _b, ids = pair()
    msg = message.bid(ids.next(), 5, 15.0, 1.0)
    raises(errors.BadValue, a.seal, msg, -1)
    raises(errors.BadValue, a.seal, msg, NOW, reply_to=2**64)
    raises(errors.BadValue, a.seal, msg, "now")


def test_group_members_cannot_crowd_out_unicast_windows():
    a, b, ids = pair()
    unicast = a.seal(message.bid(ids.next(), 5, 15.0, 1.0), NOW)
    b.open(unicast, NOW)
    for i in range(frame.GROUP_SENDERS + 40):  # more senders than the group table holds
        forger = frame.Codec(a.keyring, key_id=1000 + i)  # a member: it holds the group key
        b.open(forger.seal(message.query(ids.next(), 0, 1.0), NOW + i, group=True), NOW + i)
    assert len(b.group_replay.marks()) == frame.GROUP_SENDERS
    raises(errors.Replay, b.open, unicast, NOW)  # the unicast window is still there


def test_reply_to_links_answers_to_requests():
    a, b, ids = pair()
    bid = b.open(a.seal(message.bid(ids.next(), 5, 15.0, 1.0), NOW), NOW)
    accept = message.bid_accept(ids.next(), 5, 15.0, 15.0, 1.0)
    got = a.open(b.seal(accept, NOW, reply_to=bid.message.message_id), NOW)
    assert got.reply_to == bid.message.message_id and got.key_id == 2


def test_raw_paper_mode_is_off_by_default():
    a, b, ids = pair()
    body = message.encode(message.bid(ids.next(), 5, 15.0, 1.0))
    raises(errors.BadLength, b.open, body, NOW)
    raw = frame.Codec(None, raw=True)
    assert raw.seal(message.decode(body), NOW) == body
    assert raw.open(body, NOW).message.bid_price == 15.0


def drain(decoder, now=NOW):
    errs = []
    got = [
        f.message.message_id for f in decoder.frames(now, lambda e: errs.append(type(e).__name__))
    ]
    return got, errs


def test_stream_reassembles_frames_from_single_bytes():
    a, b, ids = pair()
    sent = [message.bid(ids.next(), 5, 15.0, 1.0) for _ in range(3)]
    stream = b"".join(a.seal(m, NOW) for m in sent)
    decoder = frame.StreamDecoder(b)
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got += drain(decoder)[0]
    assert got == [m.message_id for m in sent]


def test_stream_resynchronises_after_garbage_and_false_starts():
    a, b, ids = pair()
    sent = [message.bid(ids.next(), 5, 15.0, 1.0) for _ in range(4)]
    frames = [a.seal(m, NOW) for m in sent]
    torn = bytearray(frames[1])
    torn[50] ^= 0xFF  # a damaged frame inside the stream
    stream = b"noise" + frames[0] + b"ET\x01" + b"\x00" * 30 + bytes(torn) + frames[2] + b"E"
    stream += frames[3]
    decoder = frame.StreamDecoder(b)
    decoder.feed(stream)
    got, errs = drain(decoder)
    assert got == [sent[0].message_id, sent[2].message_id, sent[3].message_id]
    assert "BadHeader" in errs and "BadTag" in errs and decoder.skipped > 0


def test_stream_buffer_is_bounded():
    _a, b, _ids = pair()
    decoder = frame.StreamDecoder(b, max_buffer=300)
    for _ in range(100):
        decoder.feed(b"ET\x01" + bytes(97))
        assert len(decoder._buf) <= 300


def test_raw_stream_is_fixed_size_records():
    raw = frame.Codec(None, raw=True)
    bodies = [message.encode(message.bid(i, 5, 15.0, 1.0)) for i in (1, 2)]
    decoder = frame.StreamDecoder(raw)
    decoder.feed(bodies[0] + bodies[1][:10])
    assert drain(decoder)[0] == [1]
    decoder.feed(bodies[1][10:])
    assert drain(decoder)[0] == [2]
