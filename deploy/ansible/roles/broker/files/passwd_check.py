# Does the mosquitto password file (argv[1]) hold exactly the users and passwords given
# as JSON {user: password} on stdin? Prints "current" or "stale". mosquitto_passwd
# salts every hash, so the file is rebuilt only when this says "stale".
import base64
import hashlib
import json
import sys

wanted = json.load(sys.stdin)
try:
    with open(sys.argv[1]) as f:
        lines = [line.strip() for line in f if line.strip()]
    have = dict(line.split(":", 1) for line in lines)
except (OSError, ValueError):
    have = {}


def matches(password, hashed):
    parts = hashed.split("$")  # $7$iterations$salt$hash: PBKDF2-SHA512 (mosquitto 2)
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2])) == digest


same = set(have) == set(wanted) and all(matches(p, have[u]) for u, p in wanted.items())
print("current" if same else "stale")
