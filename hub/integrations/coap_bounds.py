"""What aiocoap (0.4.17, pinned) spends on a stranger, bounded: two changes to its
layers below our resources, where a request has not been authenticated yet.

- A datagram whose text options (Uri-Path, Uri-Query, ...) are not UTF-8 raised
  UnicodeDecodeError out of aiocoap's decoder: a traceback per datagram. It is now
  "unparsable" like any other malformed datagram: aiocoap drops it with one warning,
  which the command's log rate limit holds (gridbid/logs.py).
- aiocoap remembers every request (and its answer, to resend it to a duplicate) for
  EXCHANGE_LIFETIME, 247 s, with a timer each: 50,000 unauthenticated requests kept
  ~40 MB for four minutes. That memory is now a table of at most RECENT entries,
  oldest forgotten first, without timers. A duplicate of a forgotten request is
  answered again (a GET is safe to repeat; a fresh request's replay check refuses it).
"""

from aiocoap import error
from aiocoap.message import Message
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.types import CON
from aiocoap.transports import udp6

RECENT = 2048  # requests remembered against duplicates (~3 KB each with its answer)


class Decoded(Message):
    @classmethod
    def decode(cls, rawdata, remote=None):
        try:
            return super().decode(rawdata, remote)
        except UnicodeDecodeError:  # a text option that is not UTF-8
            raise error.UnparsableMessage("an option is not UTF-8 text") from None


udp6.Message = Decoded  # the UDP transport decodes each datagram with it


class BoundedMessages(MessageManager):
    """aiocoap's message layer with its memory of recent requests bounded by count and
    by age (EXCHANGE_LIFETIME), instead of one timer per request."""

    def _deduplicate_message(self, message):
        recent, now = self._recent_messages, self.loop.time()
        lifetime = message.transport_tuning.EXCHANGE_LIFETIME
        while recent:  # forget the oldest (a dict keeps insertion order) past either bound
            oldest = next(iter(recent))
            if len(recent) < RECENT and now - recent[oldest][0] < lifetime:
                break
            del recent[oldest]
        key = (message.remote, message.mid)
        found = recent.get(key)
        if found is None:
            recent[key] = [now, None]
            return False
        if message.mtype is CON and found[1] is not None:
            self._send_initially(found[1])  # its answer was lost: send it again
        return True

    def _store_response_for_duplicates(self, message):
        found = self._recent_messages.get((message.remote, message.mid))
        if found is not None:
            found[1] = message


def bound(context):
    """Bound a server context's message layers (call before it serves traffic)."""
    for interface in context.request_interfaces:
        layer = getattr(interface, "token_interface", None)
        if type(layer) is MessageManager:
            layer.__class__ = BoundedMessages
            layer._recent_messages = {}
