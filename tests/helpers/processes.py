"""Commands a test starts as a user would: read their output as it comes, stop them
as a terminal's Ctrl-C does."""

import os
import signal
import subprocess

from helpers.waiting import until


def read_until(process, text, timeout):
    """The lines a process printed until one holds text (its stdout a text pipe, made
    non-blocking here); AssertionError with its output when it exits or times out first."""
    lines = []
    os.set_blocking(process.stdout.fileno(), False)

    def seen():
        exited = process.poll() is not None
        while line := process.stdout.readline():
            lines.append(line.rstrip())
            if text in line:
                return "seen"
        return "exited" if exited else None

    got = until(seen, timeout, repr(text), lambda: ":\n" + "\n".join(lines[-30:]), every=0.05)
    assert got == "seen", "%s exited before %r:\n%s" % (process.args, text, "\n".join(lines))
    return lines


def stop(process):
    """SIGINT to its process group (start it with start_new_session=True), then SIGKILL
    after 10 s; -> its exit code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
