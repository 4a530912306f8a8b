"""Commands a test starts as a user would: read their output as it comes, stop them
as a terminal's Ctrl-C does."""

import os
import signal
import subprocess
import sys
import threading
import time

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


def started(*args):
    """`python -m gridbid.cli ARGS` in its own session (stop() ends it and its children),
    its output a text pipe for read_until, the checkout on its path."""
    from simulator import vm

    return subprocess.Popen(
        [sys.executable, "-m", "gridbid.cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(vm.ROOT)},
    )  # fmt: skip


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


class Gridbid:
    """`python -m gridbid.cli ARGS` started as a user starts it, its output (stdout and
    stderr) read as it comes, with when each line came."""

    def __init__(self, *args, cwd=None, env=None):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridbid.cli", *self.args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines = []
        self.times = []  # when each line came (time.time())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.times.append(time.time())
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self):
        return "\n".join(self.lines)

    def wait_for(self, text, timeout):
        """The first line holding text (AssertionError with the output if none comes)."""

        def seen():
            return next((x for x in self.lines if text in x), None) or (
                "<exited>" if self.proc.poll() is not None else None)  # fmt: skip

        got = until(seen, timeout, repr(text), lambda: ":\n" + self.output)
        assert got != "<exited>", "%s exited before %r:\n%s" % (self.args, text, self.output)
        return got

    def finish(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                "%s did not stop in %d s:\n%s" % (self.args[:2], timeout, self.output)
            ) from None
        self.reader.join(5)
        return code

    def kill(self):
        self.proc.kill()  # SIGKILL: it dies where it stands
        return self.finish(10)

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        return self.finish(15)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
