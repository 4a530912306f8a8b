"""`gridbid wallet ...`: a participant's own wallet, and its platform commands signed where
it lives (hub/integrations/platform/signing.py).

On the participant's machine (no hub file is read):
    gridbid wallet new me.json                      a new 0600 wallet; prints its public key
    gridbid wallet sign request.json --wallet me.json > signed.json
                                                    shows every instruction it signs, signs
On the hub's machine:
    gridbid rec buy <my public key> 1,2 --id b-1 > request.json   (no --wallet: a request)
    gridbid wallet submit signed.json               the signature checked, the command run
    gridbid wallet requests                         the commands waiting for a signature

A request must be signed and submitted before its blockhash expires (about a minute on a
cluster); after that it fails, nothing sent, and is run again under a new id.
"""

import base64
import json
import sys
from pathlib import Path

from gridbid.platform_cli import add_common, execute


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("new", help="make your own wallet file (0600); print its public key")
    p.add_argument("file", help="the new wallet file (an existing one is never replaced)")
    p = sub.add_parser("sign", help="sign a platform command's request with your wallet")
    p.add_argument("request", help="the request a command printed without --wallet (- = stdin)")
    p.add_argument("--wallet", required=True, help="your wallet file (solana-keygen, 0600)")
    p = sub.add_parser("submit", help="give the hub a signed request: the command runs")
    p.add_argument("signed", help="what `gridbid wallet sign` printed (- = stdin)")
    add_common(p)
    p = sub.add_parser("requests", help="the commands waiting for a participant's signature")
    add_common(p)


def run(args):
    from hub.integrations.settlement import wallets

    try:
        if args.action == "new":
            print(wallets.create(args.file).pubkey)
            return 0
        if args.action == "sign":
            print(json.dumps(sign(_load(args.request), wallets.read(args.wallet))))
            return 0
    except FileExistsError:
        print("error: %s exists: a wallet is never replaced" % args.file, file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # WalletError is a ValueError
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args.action == "requests":
        return execute(args, _requests)
    try:
        signed = _load(args.signed)
        command, signature = str(signed["command"]), str(signed["signature"])
    except (KeyError, TypeError, ValueError, OSError) as exc:
        print("error: not a signed request: %s" % exc, file=sys.stderr)
        return 2
    return execute(args, lambda platform: platform.engine.submit(command, signature))


async def _requests(platform):
    return platform.engine.requests()


def sign(request, wallet):
    """{"command", "signer", "signature"} of `request` signed with `wallet`, after what
    it signs is shown on stderr (signing.describe). ValueError if it is not this
    wallet's to sign, or not something the platform would ask."""
    from solders.message import Message

    from hub.integrations.platform.signing import describe

    try:
        message = Message.from_bytes(base64.b64decode(request["message"], validate=True))
        command, signer = str(request["command"]), str(request["signer"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError("not a signing request: %s" % exc) from None
    if signer != str(wallet.pubkey):
        raise ValueError("this request is for %s to sign, and the wallet is %s"
                         % (signer, wallet.pubkey))  # fmt: skip
    for line in describe(message, signer):
        print(line, file=sys.stderr)
    signature = wallet.keypair.sign_message(bytes(message))
    return {"command": command, "signer": signer, "signature": str(signature)}


def _load(name):
    text = sys.stdin.read() if name == "-" else Path(name).read_text()
    return json.loads(text)
