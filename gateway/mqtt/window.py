# -*- test-case-name: tests.mqtt.test_window -*-
"""
The in-flight window of one MQTT session, as a pure state machine: time is passed
in, packets to write come out as bytes, callers hear back through each message's
Deferred. No reactor, no transport: L{gateway.mqtt.session} keeps the connection
and drives this.

What it keeps, across connections:

 - B{The queue.} Messages wait for a session or for room in the window (the
   broker's Receive Maximum), bounded in length, in bytes and in waiting time: a
   broker slower than the traffic gets refusals at once rather than a queue that
   makes every request wait for the publish timeout.
 - B{The window.} QoS 1/2 messages sent and not yet acknowledged, by packet id. A
   QoS 0 message is answered once the broker has read it: the session follows it
   with a PINGREQ, whose PINGRESP proves that the broker read everything before it.
 - B{Resumption.} After a reconnect, unacknowledged QoS 1/2 messages are sent
   again, DUP when the broker kept the session. When the broker lost the session,
   a QoS 1 message goes again as new, a QoS 2 message fails (the broker may or may
   not have delivered it), and its packet id is released before it is used again.
 - B{No wedge.} The messages on the wire, unconfirmed, at a connection loss are
   suspects: sent again in halving groups, nothing new meanwhile. One alone on the
   wire at a loss it has been part of twice (QoS 0: once, since it is never sent
   again) is the packet the broker closes the connection on: it fails and is never
   sent again. A broker that stops acknowledging without closing is found the
   same way (L{wedged}).
 - B{What the broker showed.} A PUBACK to a QoS 2 PUBLISH caps QoS at 1; two
   packets larger than any the broker took that it closed the connection on make
   a packet size limit.

The values it works on (a pending message, the broker's limits, what a broker
showed) are in L{gateway.mqtt.pending}. L{Window} is one class of ~500 lines
because the queue, the window, resumption and the suspects all act on the same
in-flight table and count of messages on the wire, and are only correct
together: split up, each part would have to reach into the others' state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

from gateway.limits import DrainRate
from gateway.model import Message
from gateway.mqtt import codec
from gateway.mqtt.outcomes import Outcome, PublishFailed, unavailable
from gateway.mqtt.pending import BrokerLimits, Learned, Pending, encode

_NOT_KEEPING_UP = "the broker is not keeping up"

# PUBCOMP 0x92 (Packet Identifier not found) after our PUBREL: the broker had the
# message (it sent PUBREC) and has since finished with it.
_PACKET_ID_NOT_FOUND = 0x92

#: Reports what the window decides that an operator should know: (format, fields).
Say = Callable[..., None]


class Window:
    """
    The queue and the in-flight window of one session (see the module).

    Between L{connected} and L{lost} the session is up at C{level}; every method
    that may put packets on the wire returns their bytes, in order, for the
    caller to write. L{barrier_needed} says when a PINGREQ must follow them.
    """

    def __init__(
        self,
        *,
        publish_timeout: float,
        max_queue: int,
        max_queue_bytes: int,
        max_queue_delay: float,
        max_inflight: int,
        say: Say,
    ) -> None:
        self.publish_timeout = publish_timeout
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_delay = max_queue_delay
        self.max_inflight = max_inflight
        self._say = say
        self.level: int | None = None  # None while no session is up
        self.limits = BrokerLimits()
        self.learned = Learned()
        self._queue: deque[Pending] = deque()
        self._queued_bytes = 0
        self._drain = DrainRate()
        self._deadlines: deque[Pending] = deque()  # in order of deadline
        self.inflight: dict[int, Pending] = {}
        self._unconfirmed: list[Pending] = []  # QoS 0 sent, not yet read
        self._covered = 0  # how many of them the PINGREQ in flight confirms
        self.barrier_needed = False
        self._careful: int | None = None  # suspects on the wire at once
        self._wire = 0  # messages on the wire, not yet confirmed
        self._progress_at = 0.0  # when the broker last confirmed one
        self._next_packet_id = 1
        self.disconnect_reason: int | None = None

    # -- what callers see

    @property
    def queued(self) -> int:
        """Messages waiting for a session or for room in the window."""
        return len(self._queue)

    @property
    def careful(self) -> bool:
        """Whether suspects are being sent again, one group at a time."""
        return self._careful is not None

    def refusal(self, message: Message, now: float) -> str | None:
        """Why the queue cannot take C{message} now, or C{None} when it can."""
        queue = self._queue
        if len(queue) + len(self.inflight) >= self.max_queue:
            return "too many messages are waiting for the broker"
        if not queue:
            return None
        if self._queued_bytes + len(message.payload) > self.max_queue_bytes:
            return "too many bytes are waiting for the broker"
        wait = self._drain.wait(len(queue), now)
        if wait is None or wait < now - queue[0].queued_at:
            wait = now - queue[0].queued_at
        if wait > self.max_queue_delay:
            if math.isinf(wait):
                return "the broker is not taking messages"
            return f"{_NOT_KEEPING_UP} (messages wait {wait:.1f} s)"
        return None

    def offer(self, pending: Pending, now: float) -> list[bytes]:
        """
        Take C{pending} (L{refusal} said it may come); returns what to write:
        at once when a session is up and the window has room.
        """
        pending.queued_at = now
        pending.deadline = now + self.publish_timeout
        self._deadlines.append(pending)
        self._queue.append(pending)
        self._queued_bytes += len(pending.message.payload)
        return self.sendable(now)

    # -- time

    def next_deadline(self) -> float | None:
        """When L{expire} has work next (a request's timeout), if ever."""
        deadlines = self._deadlines
        while deadlines and not deadlines[0].waiting:
            deadlines.popleft()
        return deadlines[0].deadline if deadlines else None

    def expire(self, now: float) -> None:
        """Fail every request whose publish timeout has passed (503); one in
        flight keeps its packet id until the broker answers."""
        deadlines = self._deadlines
        while deadlines and deadlines[0].deadline <= now:
            pending = deadlines.popleft()
            if not pending.waiting:
                continue
            if pending.packet_id is None and not pending.on_wire:
                try:
                    self._queue.remove(pending)
                    self._queued_bytes -= len(pending.message.payload)
                except ValueError:
                    pass
            pending.fail(
                PublishFailed(
                    Outcome.TIMEOUT,
                    f"the broker did not acknowledge within {self.publish_timeout:g} s",
                    retry_after=1,
                )
            )

    def ack_timeout(self) -> float:
        """
        Seconds the broker may leave everything on the wire unconfirmed before
        the connection counts as wedged: RabbitMQ, given a PUBLISH over its
        max_message_size, acknowledges nothing more on that connection while it
        still answers PINGREQ. Half as long again as the publish timeout (the
        requests have had their 503s by then); at most two seconds while suspects
        are sent again, each group expected back promptly.
        """
        if self._careful is not None:
            return min(self.publish_timeout, 2.0)
        return 1.5 * self.publish_timeout

    def watchdog_deadline(self) -> float | None:
        """When the connection counts as wedged if nothing is confirmed first."""
        return self._progress_at + self.ack_timeout() if self._wire else None

    def wedged(self, now: float) -> bool:
        """Whether messages have been on the wire unconfirmed for too long."""
        deadline = self.watchdog_deadline()
        return deadline is not None and now >= deadline

    # -- the connection

    def connected(
        self,
        level: int,
        limits: BrokerLimits,
        learned: Learned,
        resumed: bool,
        now: float,
    ) -> list[bytes]:
        """
        A session is up at C{level}: what the broker kept is completed (PUBREL
        again), suspects go again (DUP when C{resumed}); what the broker lost
        fails unless it can safely go again (QoS 1, as a new message). Returns
        what to write.
        """
        self.level = level
        self.learned = learned
        self.limits = limits.narrowed(learned)
        self.disconnect_reason = None
        out: list[bytes] = []
        for packet_id, pending in list(self.inflight.items()):
            qos = pending.message.qos
            if (
                qos == 1
                and not pending.waiting
                and not self._still_counts(pending, now)
            ):
                del self.inflight[packet_id]  # nobody waits; the broker keeps nothing
                continue
            if qos == 2 and not resumed:
                pending.fail(
                    PublishFailed(
                        Outcome.SESSION_LOST,
                        "the broker lost the session with this QoS 2 message: it may"
                        " or may not have been delivered",
                        retry_after=1,
                    )
                )
                # Some brokers (Aedes) keep the ids of QoS 2 messages they have
                # seen while saying no session is present: release the id, and
                # keep it until PUBCOMP, so that no later message under it is
                # taken for a duplicate and dropped.
                pending.released = True
            if pending.released:
                out.append(codec.encode(codec.PubRel(packet_id), level))
                continue
            try:
                data = encode(pending, level, packet_id)
            except PublishFailed as e:
                del self.inflight[packet_id]
                pending.fail(e)
                continue
            pending.data = codec.as_duplicate(data) if resumed else data
        if self._careful is None and any(self._suspects()):
            self._careful = 1
        out += self.sendable(now)
        return out

    def lost(self, now: float) -> None:
        """
        The connection ended. The messages on the wire unconfirmed each get a
        strike; a lone one that has had enough is the culprit. Unconfirmed QoS 0
        messages are never sent again (they may have been delivered).
        """
        self.level = None
        wire = [p for p in self.inflight.values() if p.on_wire]
        wire += self._unconfirmed
        self._unconfirmed, self._covered, self._wire = [], 0, 0
        self.barrier_needed = False
        for pending in wire:
            pending.on_wire = False
            pending.strikes += 1
        if len(wire) == 1 and (wire[0].message.qos == 0 or wire[0].strikes >= 2):
            self._blame(wire.pop())
        for pending in wire:
            if pending.message.qos == 0:
                pending.fail(
                    unavailable(
                        "the connection to the broker was lost before it read the"
                        " message"
                    )
                )
        suspects = sum(1 for p in wire if p.message.qos)
        if suspects:
            self._careful = max(1, suspects // 2)

    def fail_waiting(self, failure: PublishFailed, now: float) -> None:
        """Fail everything that waits (queued, in flight, unconfirmed)."""
        queue, self._queue = self._queue, deque()
        self._queued_bytes = 0
        self._drain.waiting(False, now)
        for pending in queue:
            pending.fail(failure)
        for pending in self.inflight.values():
            pending.fail(failure)
        for pending in self._unconfirmed:
            pending.fail(failure)

    # -- the broker's answers

    def puback(self, packet: codec.PubAck, now: float) -> list[bytes]:
        """A PUBACK: QoS 1 done (or failed by its reason code); a PUBACK to a
        QoS 2 PUBLISH means the broker offers QoS 1 at most."""
        pending = self.inflight.get(packet.packet_id)
        if pending is not None and pending.message.qos == 2:
            del self.inflight[packet.packet_id]
            self._confirmed(pending, now)
            self._downgraded(pending)
            return self.sendable(now)
        return self._finish(packet.packet_id, packet.reason_code, now)

    def pubrec(self, packet: codec.PubRec, now: float) -> list[bytes]:
        """A PUBREC: the broker has the QoS 2 message; PUBREL follows."""
        pending = self.inflight.get(packet.packet_id)
        if pending is None or self.level is None:
            return []
        if packet.reason_code >= 0x80:
            return self._finish(packet.packet_id, packet.reason_code, now)
        self._confirmed(pending, now)
        pending.released = True
        return [codec.encode(codec.PubRel(packet.packet_id), self.level)]

    def pubcomp(self, packet: codec.PubComp, now: float) -> list[bytes]:
        """A PUBCOMP: QoS 2 done (0x92 after our PUBREL counts as done)."""
        code = packet.reason_code
        return self._finish(
            packet.packet_id, 0 if code == _PACKET_ID_NOT_FOUND else code, now
        )

    def qos0_read(self, count: int, now: float) -> list[bytes]:
        """The PINGRESP of the barrier: the first C{count} unconfirmed QoS 0
        messages were read by the broker, so they are delivered."""
        done, self._unconfirmed = self._unconfirmed[:count], self._unconfirmed[count:]
        self._covered = 0
        for pending in done:
            self._confirmed(pending, now)
            pending.succeed()
        self._need_barrier()
        return self.sendable(now)

    def barrier_sent(self) -> int:
        """The session sent the PINGREQ L{barrier_needed} asked for; returns how
        many QoS 0 messages its PINGRESP confirms."""
        self.barrier_needed = False
        self._covered = len(self._unconfirmed)
        return self._covered

    # -- sending

    def sendable(self, now: float) -> list[bytes]:
        """What may go on the wire now: suspects first, then the queue."""
        if self.level is None:
            self._drain.waiting(bool(self._queue), now)
            return []
        if not self._queue and self._careful is None:
            self._drain.waiting(False, now)
            return []  # the common case after an acknowledgement
        out: list[bytes] = []
        if self._careful is not None:
            self._send_suspects(out, now)
        if self._careful is None:
            self._send_queued(out, now)
        self._drain.waiting(bool(self._queue), now)
        return out

    def _send_queued(self, out: list[bytes], now: float) -> None:
        level = self.level
        assert level is not None
        limits = self.limits
        window = min(limits.receive_maximum, self.max_inflight)
        queue, inflight = self._queue, self.inflight
        stale = now - self.max_queue_delay
        new_qos0 = False
        while queue:
            pending = queue[0]
            message = pending.message
            qos = message.qos
            if qos and len(inflight) >= window:
                break
            queue.popleft()
            self._queued_bytes -= len(message.payload)
            if not pending.waiting:
                continue
            if pending.queued_at < stale:
                # Admitted before the slowness showed: it would be answered far
                # later than the bound promises. Not sent yet, so safe to refuse.
                pending.fail(unavailable(_NOT_KEEPING_UP))
                continue
            self._drain.departed()
            try:
                self._check_limits(message)
                packet_id = self._allocate_packet_id() if qos else None
                data = encode(pending, level, packet_id)
                self._check_size(data)
            except PublishFailed as e:
                pending.fail(e)
                continue
            pending.data, pending.packet_id = data, packet_id
            self._put_on_wire(pending, now)
            if packet_id is not None:
                inflight[packet_id] = pending
            else:
                self._unconfirmed.append(pending)
                new_qos0 = True
            out.append(data)
        if new_qos0:
            self._need_barrier()

    def _need_barrier(self) -> None:
        # One PINGREQ at a time: QoS 0 costs one ping per round trip.
        if self._unconfirmed and not self._covered and self.level is not None:
            self.barrier_needed = True

    def _send_suspects(self, out: list[bytes], now: float) -> None:
        assert self._careful is not None
        for pending in self._suspects():
            if self._wire >= self._careful:
                return
            self._put_on_wire(pending, now)
            out.append(pending.data)
        if not self._wire:
            self._careful = None

    def _suspects(self) -> Iterable[Pending]:
        """In-flight messages not yet confirmed, not on the wire, in order."""
        return (p for p in self.inflight.values() if not p.released and not p.on_wire)

    def _still_counts(self, pending: Pending, now: float) -> bool:
        """
        Whether a QoS 1 message whose request has timed out is sent again: only
        as a suspect of a connection loss, within three publish timeouts of its
        first sending, so that the message a broker keeps failing on is still
        found (and its size learned) when its request could not wait for it.
        """
        first = pending.first_sent
        return (
            pending.strikes > 0
            and first is not None
            and now - first < 3 * self.publish_timeout
        )

    def _put_on_wire(self, pending: Pending, now: float) -> None:
        pending.on_wire = True
        if pending.first_sent is None:
            pending.first_sent = now
        if not self._wire:
            self._progress_at = now
        self._wire += 1

    def _confirmed(self, pending: Pending, now: float) -> None:
        """The broker read C{pending}'s PUBLISH without closing the connection."""
        if pending.on_wire:
            pending.on_wire = False
            self._wire -= 1
        self._progress_at = now
        pending.strikes = 0
        learned = self.learned
        learned.largest_taken = max(learned.largest_taken, len(pending.data))

    def _finish(self, packet_id: int, reason_code: int, now: float) -> list[bytes]:
        pending = self.inflight.pop(packet_id, None)
        if pending is None:
            return []
        self._confirmed(pending, now)
        if reason_code >= 0x80:
            pending.fail(
                PublishFailed(Outcome.REASON_CODE, "", reason_code=reason_code)
            )
        else:
            pending.succeed(reason_code)
        return self.sendable(now)

    def _check_limits(self, message: Message) -> None:
        limits = self.limits
        if message.qos > limits.maximum_qos:
            raise PublishFailed(
                Outcome.QOS_LIMIT,
                f"the broker accepts QoS {limits.maximum_qos} at most",
            )
        if message.retain and not limits.retain_available:
            raise PublishFailed(
                Outcome.RETAIN_LIMIT, "the broker does not support retained messages"
            )

    def _check_size(self, data: bytes) -> None:
        limit = self.limits.maximum_packet_size
        if limit is not None and len(data) > limit:
            raise PublishFailed(
                Outcome.SIZE_LIMIT,
                f"the message is larger than the broker's limit of {limit} bytes",
            )

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        inflight = self.inflight
        while packet_id in inflight:
            packet_id = packet_id % 65535 + 1
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    # -- what the broker showed

    def _downgraded(self, pending: Pending) -> None:
        """The broker answered a QoS 2 PUBLISH with PUBACK: it honours QoS 1 at
        most. The message was taken, but not with the promise asked for."""
        learned = self.learned
        if learned.qos > 1:
            learned.qos = 1
            self.limits = self.limits.narrowed(learned)
            self._say(
                "The broker answered a QoS 2 message with PUBACK: it offers QoS 1 at"
                " most; QoS 2 requests are refused from now on"
            )
        pending.fail(
            PublishFailed(
                Outcome.QOS_LIMIT,
                "the broker took this message at QoS 1 only (it answered PUBACK): it"
                " offers QoS 1 at most, so exactly-once delivery cannot be promised",
            )
        )

    def _blame(self, pending: Pending) -> None:
        """C{pending} is the packet the broker closes the connection on."""
        if pending.packet_id is not None:
            self.inflight.pop(pending.packet_id, None)
        learned = self.learned
        size = len(pending.data)
        reason = self.disconnect_reason
        if reason is not None and reason >= 0x80:
            failure = PublishFailed(
                Outcome.CLOSED_ON,
                "the broker closed the connection on this message",
                reason_code=reason,
            )
        elif 0 < learned.largest_taken < size:
            learned.too_large = [
                n for n in learned.too_large if n > learned.largest_taken
            ] + [size]
            if len(learned.too_large) >= 2:
                learned.packet_size = min(learned.too_large) - 1
                failure = PublishFailed(
                    Outcome.SIZE_LIMIT,
                    f"the broker closed the connection on this message of {size}"
                    f" bytes, as on another larger than any it has taken"
                    f" ({learned.largest_taken} bytes); messages of"
                    f" {learned.packet_size + 1} bytes or more are refused from now on",
                )
            else:
                failure = PublishFailed(
                    Outcome.CLOSED_ON,
                    f"the broker closed the connection on this message of {size}"
                    f" bytes, larger than any it has taken ({learned.largest_taken}"
                    " bytes): it may be over the broker's size limit; it is not sent"
                    " again",
                )
        else:
            failure = PublishFailed(
                Outcome.CLOSED_ON,
                "the broker closed the connection on this message; it is not sent"
                " again",
            )
        self._say(
            "The broker closes the connection on message {message_id} ({size} bytes,"
            " topic {topic!r}); it is dropped: {why}",
            message_id=pending.message_id,
            size=size,
            topic=pending.message.topic,
            why=failure.message,
        )
        pending.fail(failure)
