"""Everything the ETP decoder may raise, and nothing else.

All are ValueErrors, so a caller that only wants "bad input, drop it" catches
ETPError; a caller that wants to count or log by cause catches the subclass.
"""


class ETPError(ValueError):
    """Base class: the input is not an acceptable ETP frame or record."""


class BadLength(ETPError):
    """The frame or body is not the fixed size."""


class BadHeader(ETPError):
    """Wrong magic, unsupported version, or reserved flag bits set."""


class UnknownType(ETPError):
    """message_type is not one of the 10 ETP types."""


class BadValue(ETPError):
    """A field is non-finite or outside its physical range."""


class UnknownKey(ETPError):
    """No key is held for the frame's key id (an unknown peer)."""


class BadTag(ETPError):
    """The authentication tag does not match: tampered, or signed by another key."""


class Replay(ETPError):
    """The sender's message_id was already seen, or is too old for the window."""


class Expired(ETPError):
    """The frame is older than its ttl allows, or dated in the future."""


class ContractError(ETPError):
    """An invalid market contract, or a state change the contract rules forbid."""
