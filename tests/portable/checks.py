"""Tiny test helpers that work on MicroPython and CPython alike."""

import json
import os
import random

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
VECTORS = _HERE + "/../protocol/vectors"


class TempDir:
    """A fresh directory under /tmp (MicroPython has no tempfile), removed on exit."""

    def __enter__(self):
        self.path = "/tmp/gridbid-test-%08x" % random.getrandbits(32)
        os.mkdir(self.path)
        return self.path

    def __exit__(self, *exc):
        for name in os.listdir(self.path):
            os.remove(self.path + "/" + name)
        os.rmdir(self.path)


def raises(exc_type, fn, *args, **kwargs):
    """Call fn; assert it raises exc_type (exactly that class or a subclass); return the error."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    except Exception as exc:  # the wrong error is a failure too, with its name
        name = getattr(fn, "__name__", fn)
        raise AssertionError(  # noqa: B904 (MicroPython warns on chaining)
            "%s raised %s(%s), not %s" % (name, type(exc).__name__, exc, exc_type.__name__)
        )
    raise AssertionError("%s did not raise %s" % (getattr(fn, "__name__", fn), exc_type.__name__))


def vectors(name):
    with open(VECTORS + "/" + name) as f:
        return json.load(f)


def unhex(text):
    import binascii

    return binascii.unhexlify(text)
