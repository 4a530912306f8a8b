"""Files that hold secrets (the hub's keys, an aggregator's identity, a battery's
config.json, an enrollment): JSON, mode 0600 like an ssh key, written whole.

Every party that is not a battery reads and writes them through here, so the
rules are one: a file others can read is refused, a write goes to a temporary
file first and is renamed over the old one (a crash leaves the old file whole),
and the temporary file is created 0600 (the secrets are never readable by
others, not even for a moment). Errors are SecretFileError with one line that
names the file and, never, a secret.
"""

import json
import os
import stat


class SecretFileError(ValueError):
    pass


def read(path, what="the file", kind=dict):
    """The JSON object in path (kind None: any JSON value, e.g. a wallet's array);
    SecretFileError when it is missing, unreadable, not JSON, not of its kind, or
    readable by others."""
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SecretFileError("no %s %s" % (what, path)) from None
    except OSError as exc:
        raise SecretFileError("cannot read %s %s: %s" % (what, path, exc.strerror)) from None
    except ValueError:
        raise SecretFileError("%s %s is not valid JSON" % (what, path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError("%s %s is readable by others: chmod 600 it" % (what, path))
    if kind is not None and not isinstance(data, kind):
        raise SecretFileError("%s %s must hold a JSON object" % (what, path))
    return data


def write(path, data):
    """Write-temp-then-rename, created 0600."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise SecretFileError("cannot write %s: %s" % (path, exc.strerror)) from None


def new_secret(size=32):
    return os.urandom(size).hex()
