"""`gridbid etp decode|encode`: ETP frames to JSON and back, for people reading captures.

    gridbid etp decode HEX --key-file keys.json     verify and decode a frame
    gridbid etp decode HEX --no-verify              decode without the key (marked unverified)
    gridbid etp decode HEX --raw                    a bare 84-byte body (paper mode)
    gridbid etp encode '{"type": "bid", ...}' --key-file keys.json --key-id 7 --to 1001

A key file is JSON: {"keys": {"<peer id>": "<pair key hex>"}, "group": "<hex>"} (a
battery's config.json is one); keep it private (chmod 600). A frame is checked with
the pair key held under its sender's id, and sealed with the one held under its
receiver's (--to). HEX may contain spaces or colons; "-" reads stdin.
A bad frame prints one line naming what is wrong and exits 1; bad usage exits 2.
"""

import json
import sys
import time

from protocol import auth, errors, frame, message, message_info
from transport.links import now_ms


def add_arguments(parser):
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    decode = verbs.add_parser("decode", help="frame hex -> JSON")
    decode.add_argument("hex", help='the frame or body as hex ("-" reads stdin)')
    encode = verbs.add_parser("encode", help="JSON -> frame hex")
    encode.add_argument("json", help='a message as JSON, or decode\'s output ("-" reads stdin)')
    for sub in (decode, encode):
        sub.add_argument("--raw", action="store_true", help="bare 84-byte body, no header or tag")
        sub.add_argument("--key-file", metavar="F", help="JSON key file (see above)")
    decode.add_argument("--no-verify", action="store_true", help="decode without checking the tag")
    decode.add_argument(
        "--check-ttl", action="store_true", help="also refuse the frame if it is expired now"
    )
    encode.add_argument("--key-id", type=int, help="the sender's key id (default: decode's)")
    encode.add_argument("--to", type=int, help="the receiver's key id: its pair key seals "
                        "(default: the file's only key)")  # fmt: skip
    encode.add_argument("--group", action="store_true", help="tag with the group key")
    encode.add_argument("--reply-to", type=int, default=None, help="message_id this answers")
    encode.add_argument("--sent-ms", type=int, default=None, help="header time (default: now)")


class UsageError(Exception):
    pass


def run(args):
    try:
        if args.verb == "decode":
            out = decode(args)
        else:
            out = encode(args)
    except errors.ETPError as exc:
        print("bad frame: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    except UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    print(out)
    return 0


def read_arg(text):
    return sys.stdin.read() if text == "-" else text


def parse_hex(text):
    cleaned = "".join(read_arg(text).split()).replace(":", "")
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError("not hex: %r" % (text[:40],)) from None


def load_keys(path):
    import os

    if path is None:
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError("cannot read key file: %s" % exc) from None
    except json.JSONDecodeError as exc:
        raise UsageError("key file %s is not JSON: %s" % (path, exc)) from None
    if mode & 0o077:
        print("warning: key file %s is readable by others (chmod 600 it)" % path, file=sys.stderr)
    try:
        return data, auth.Keyring.from_json(data)
    except ValueError as exc:
        raise UsageError("key file %s: %s" % (path, exc)) from None


def decode(args):
    data = parse_hex(args.hex)
    if args.raw:
        return json.dumps({"mode": "raw", "message": message_info.as_dict(message.decode(data))})
    group, key_id, sent_ms, reply_to = frame.parse_header(data)
    keys = load_keys(args.key_file)
    if keys is None and not args.no_verify:
        raise UsageError(
            "frame is from sender %d: pass --key-file to verify it, or --no-verify" % key_id
        )
    now = now_ms()
    if args.no_verify:
        msg = message.decode(data[frame.HEADER_SIZE : frame.SIGNED_SIZE])
    else:
        # A capture is usually older than its ttl: check expiry only when asked.
        msg = frame.Codec(keys[1]).open(data, now if args.check_ttl else sent_ms).message
    return json.dumps(
        {
            "mode": "unverified" if args.no_verify else "authenticated",
            "key_id": key_id,
            "group": group,
            "sent_ms": sent_ms,
            "sent_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sent_ms / 1000)),
            "age_ms": now - sent_ms,
            "reply_to": reply_to,
            "message": message_info.as_dict(msg),
        }
    )


def encode(args):
    try:
        doc = json.loads(read_arg(args.json))
    except json.JSONDecodeError as exc:
        raise UsageError("not JSON: %s" % exc) from None
    if not isinstance(doc, dict):
        raise UsageError("the JSON must be an object")
    outer = doc if isinstance(doc.get("message"), dict) else {}  # decode's output
    msg = message_info.from_dict(outer.get("message", doc))
    if args.raw:
        return message.encode(msg).hex()
    keys = load_keys(args.key_file)
    if keys is None:
        raise UsageError("pass --key-file to sign the frame (or --raw for a bare body)")
    group = args.group or bool(outer.get("group"))
    to = args.to
    if to is None and not group:
        ids = list(keys[0].get("keys") or {})
        if len(ids) != 1:
            raise UsageError("the key file holds %d pair keys: pick one with --to" % len(ids))
        to = int(ids[0])
    key_id = args.key_id if args.key_id is not None else outer.get("key_id")
    if key_id is None:
        raise UsageError("name the sender with --key-id")
    codec = frame.Codec(keys[1], key_id=key_id)
    sent = args.sent_ms if args.sent_ms is not None else outer.get("sent_ms", now_ms())
    reply_to = args.reply_to if args.reply_to is not None else outer.get("reply_to", 0)
    return codec.seal(msg, sent, reply_to=reply_to, group=group, to=to).hex()
