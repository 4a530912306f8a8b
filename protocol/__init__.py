"""ETP — the Energy Trading Protocol, shared by the firmware and the hub.

One pure-Python package that runs unchanged on MicroPython and CPython.
Import the submodule you need; nothing is imported eagerly here, because
every import costs RAM on a board:

    from protocol import message, frame, auth, contract, errors
"""

VERSION = "0.1.0"
