"""The platform's errors: every refusal is a PlatformError whose message says why."""


class PlatformError(ValueError):
    """A command refused: the message says why (nothing was done)."""


class Replayed(PlatformError):
    def __init__(self, command, status, result, error):
        self.command, self.status, self.result = command, status, result
        if status == "done":
            text = "command %r was already applied; its result: %s" % (command, result)
        elif status == "failed":
            text = "command %r already failed: %s" % (command, error)
        else:
            text = "command %r is still pending on chain: run it later (resume)" % command
        super().__init__(text)


class Pending(PlatformError):
    """Sent, not final yet (an RPC cluster): resume() finishes it."""
