"""One authenticated TCP link to one battery (an aggregator's session with it).

DeviceLink reconnects with
backoff (0.5 s, doubling to 30 s). A frame sent while the link is up and nothing
waits is sealed and written at once. Otherwise (not connected yet, or the peer
not reading: the transport holds WRITE_BUFFER_HIGH bytes) it waits in a bounded
priority queue, most urgent ETP priority first (message_info.TIMING), first in first
out within a priority; waiting frames leave in that order, joined into few writes,
when the link connects (after on_connect, whose frames join them) or the peer
reads again. Frames are sealed when they leave, so sent_ms is the real send time;
a full queue refuses a frame (QueueFull) rather than grow. Every frame received
goes to the link's handler as soon as the transport has read it (no reader task, no
StreamReader: at 1,000 links, that saves a quarter of the hub's CPU per frame); a handler
that raises is reported to the loop's exception handler and the link reads on.
"""

import asyncio
import itertools
import random
import threading
import time

from protocol import errors, frame, message_info
from transport import tasks

BACKOFF_S = (0.5, 30.0)
# A session shorter than this is no success: a peer that accepts and closes at once (or
# one out of peer slots) is retried with growing delays, not thousands of times a second.
STABLE_S = 5.0
# A link's transport buffers at most this much (the kernel's socket buffer aside);
# past it, frames wait in the link's priority queue, where the urgent go first.
WRITE_BUFFER_HIGH = 16 * frame.FRAME_SIZE
READ_SIZE = 64 * frame.FRAME_SIZE  # one read at most
_reads = threading.local()  # the read buffer the links of a thread share


def now_ms():
    return time.time_ns() // 1_000_000


class QueueFull(Exception):
    """A link's outgoing queue is full: the battery is not reading, or is gone."""


class DeviceLink:
    """One aggregator's TCP session with one battery, kept up."""

    def __init__(self, codec, address, port, handler, queue_size=64, on_connect=None,
                 device_id=None):  # fmt: skip
        self.codec = codec
        self.address, self.port = address, port
        self.device_id = device_id  # the battery at the other end (its key id): sealed for it
        self.handler = handler  # called as handler(link, frame) for every frame received
        # Called on every (re)connection: a battery closes a session that does not
        # authenticate soon, so the aggregator says something (e.g. a Query) at once.
        self.on_connect = on_connect
        # Frames waiting for the link (not connected, or the peer not reading), most
        # urgent first; a frame that finds the link writable and nothing waiting is
        # written at once instead.
        self.queue = asyncio.PriorityQueue(queue_size)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.expired = 0  # queued frames dropped at their expiry
        self._order = itertools.count()
        self._session = None  # the _Session while connected
        self._task = None

    def send(self, msg, reply_to=0, expires_ms=None):
        """Send a frame now, or queue it by ETP priority; raises QueueFull rather than grow.
        expires_ms: a queued frame not written by then is dropped (a question whose
        asker has stopped waiting must not reach the battery after a reconnect).

        A frame that finds the link writable and nothing waiting is sealed and written
        at once (nothing is waiting that it could pass or that could pass it). Otherwise
        it waits in the queue, and waiting frames leave most urgent first, FIFO within
        a priority, when the link connects or the peer reads again.
        """
        session = self._session
        if session is not None and session.writable and not self.queue.qsize():
            transport = session.transport
            if not transport.is_closing():
                transport.write(self.codec.seal(msg, now_ms(), reply_to, to=self.device_id))
                return
            session.writable = False  # lost: the frame waits for the next connection
        try:
            self.queue.put_nowait(
                (
                    message_info.priority(msg.message_type),
                    next(self._order),
                    msg,
                    reply_to,
                    expires_ms,
                )
            )
        except asyncio.QueueFull:
            raise QueueFull(
                "link to %s: %d frames waiting" % (self.address, self.queue.qsize())
            ) from None

    def start(self):
        # Its own loop reconnects; a bug that escapes it restarts it (one line, not silence).
        self._task = tasks.keep("link to %s:%s" % (self.address, self.port), self._run)
        return self

    async def close(self):
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self):
        loop = asyncio.get_running_loop()
        delay = BACKOFF_S[0]
        while True:
            try:
                _, session = await loop.create_connection(
                    lambda: _Session(self, loop), self.address, self.port
                )
            except OSError:
                await asyncio.sleep(delay * random.uniform(1.0, 1.5))  # jitter: no herd
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            opened = loop.time()
            try:
                await session.closed
            finally:
                session.end()
                session.transport.close()
                self.reconnects += 1
            if loop.time() - opened >= STABLE_S:
                delay = BACKOFF_S[0]  # a session that lived: come back at once
                continue
            await asyncio.sleep(delay * random.uniform(1.0, 1.5))
            delay = min(delay * 2, BACKOFF_S[1])

    def _report(self, what, exc):
        asyncio.get_running_loop().call_exception_handler(
            {"message": "link to %s:%s: %s" % (self.address, self.port, what), "exception": exc}
        )


class _Session(asyncio.BufferedProtocol):
    """One TCP connection of a DeviceLink: frames are decoded and handed to the handler
    as soon as the transport has read them (no reader task), and the link's queue is
    flushed here when the connection is made and whenever the transport's buffer drains.

    A read takes at most READ_SIZE bytes, into a buffer that all the links of a thread
    share (a selector loop reads into it and hands it back at once): a link with a
    backlog yields to the others every READ_SIZE, and no read allocates.
    """

    def __init__(self, link, loop):
        self.link = link
        self.transport = None
        self.writable = False  # connected, on_connect done, and the transport not paused
        self.decoder = frame.StreamDecoder(link.codec)
        # While every frame so far was good and the bytes received add up to whole
        # frames, the decoder holds nothing, so a read of whole frames can skip it.
        self.in_step = True
        self.partial = 0  # bytes received so far, modulo the frame size
        self.lent = None  # the buffer of the read under way
        self.closed = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        # Past a few frames in the transport's buffer, frames wait in the link's
        # priority queue, where a more urgent one can still go first.
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        link = self.link
        link._session = self
        link.connected.set()
        if link.on_connect is not None:
            try:  # what it sends is queued, and leaves with the rest in priority order
                link.on_connect(link)
            except Exception as exc:
                link._report("on_connect failed", exc)
        self.writable = not transport.is_closing()
        self.flush()

    def get_buffer(self, sizehint):
        view = getattr(_reads, "view", None)
        if view is None:
            view = _reads.view = memoryview(bytearray(READ_SIZE))
        elif _reads.lent:  # a loop that keeps a buffer across reads (proactor): one of ours
            view = memoryview(bytearray(READ_SIZE))
        _reads.lent = view is _reads.view
        self.lent = view
        return view

    def buffer_updated(self, nbytes):
        data = self.lent
        if data is _reads.view:
            _reads.lent = False
        link = self.link
        handler, codec, now = link.handler, link.codec, now_ms()
        size = codec.frame_size
        at = 0
        if self.in_step and not self.partial and not nbytes % size:
            # The usual read: whole frames (most often one), opened where they lie, and
            # dropped as the stream decoder would drop them.
            while at < nbytes:
                try:
                    got = codec.open(data[at : at + size], now)
                except (errors.BadHeader, errors.UnknownKey, errors.BadTag):
                    break  # no frame starts here: the decoder finds the next one
                except errors.ETPError:  # authentic but not acceptable (Expired, Replay)
                    at += size
                    continue
                at += size
                try:
                    handler(link, got)
                except Exception as exc:  # a handler's bug must not take the link down
                    link._report("handler failed", exc)
            else:
                return
        rest = bytes(data[at:nbytes])
        self.partial = (self.partial + len(rest)) % size
        decoder = self.decoder
        decoder.feed(rest)
        for got in decoder.frames(now, self._dropped):
            try:
                handler(link, got)
            except Exception as exc:
                link._report("handler failed", exc)

    def _dropped(self, exc):
        if isinstance(exc, (errors.BadHeader, errors.UnknownKey, errors.BadTag)):
            self.in_step = False  # the decoder skipped bytes: it keeps the count from now on

    def pause_writing(self):
        self.writable = False

    def resume_writing(self):
        if self.link._session is self:
            self.writable = True
            self.flush()

    def connection_lost(self, exc):
        self.end()
        if not self.closed.done():
            self.closed.set_result(None)

    def end(self):
        self.writable = False
        link = self.link
        if link._session is self:
            link._session = None
            link.connected.clear()

    def flush(self):
        """Write waiting frames, most urgent first, sealed now and joined into one write
        per transport buffer's worth, until none wait or the transport pauses."""
        link = self.link
        queue, codec, transport = link.queue, link.codec, self.transport
        while self.writable and queue.qsize():
            room = (WRITE_BUFFER_HIGH - transport.get_write_buffer_size()) // codec.frame_size
            room = max(1, room)
            at, parts = now_ms(), []
            while room and queue.qsize():
                _priority, _n, msg, reply_to, expires_ms = queue.get_nowait()
                if expires_ms is not None and at > expires_ms:
                    link.expired += 1  # nobody waits for its answer any more
                    continue
                try:
                    parts.append(codec.seal(msg, at, reply_to, to=link.device_id))
                except Exception as exc:  # e.g. a bad reply_to: only that frame is lost
                    link._report("frame not sent", exc)
                    continue
                room -= 1
            if parts:
                transport.write(b"".join(parts))
            if transport.is_closing():
                self.writable = False
