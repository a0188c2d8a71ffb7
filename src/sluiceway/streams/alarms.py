"""Many timers on one event-loop timer: a heap of :class:`Alarm` objects, earliest first.

Why: an event-loop timer costs ≈ 585 bytes under uvloop (its handle and libuv's timer), and every
open stream had two (its generation's deadline, its reader's heartbeat clock), each moved only when
it fires. Here a timer is an :class:`Alarm` - the object that wants to be called, with one slot - plus
a heap entry (≈ 70 bytes), and one loop timer stands for the earliest of them all.

How it works: :meth:`Alarms.set` pushes ``(when, ticket, alarm)`` and gives the alarm that ticket;
setting it again or cancelling it only changes the alarm's ticket, so the old entry goes stale and is
skipped when it comes up (stale entries are swept out when they are more than half the heap, and all
of them when no alarm is set). The loop timer is moved only when an entry earlier than the one it
waits for arrives. When it fires, every alarm due within a millisecond (the loop's own timers are no
more precise) is called through :meth:`Alarm.fire`, in time order; an alarm is not set any more
when it fires (it sets itself again if it wants to; if for a time already due, it is called in the
next round, not in this one). An :class:`Alarms` holds no event loop: it uses
the running one, so one object can serve a hub for its whole life.
"""

from __future__ import annotations

import asyncio
import heapq

DUE_WITHIN_S = 0.001
"""An alarm this close to its time when the loop timer fires is called then (timers fire to the ms)."""


class Alarm:
    """Something to be called at a time set through :class:`Alarms`; subclasses say what in :meth:`fire`."""

    __slots__ = ("_ticket",)

    def __init__(self) -> None:
        self._ticket = 0

    @property
    def is_set(self) -> bool:
        """Whether a time is set (it has not fired nor been cancelled since)."""
        return self._ticket != 0

    def fire(self) -> None:
        """Called on the event loop once the time set has come."""
        raise NotImplementedError


class Alarms:
    """One event-loop timer for any number of :class:`Alarm` objects (see the module)."""

    __slots__ = ("_due", "_handle", "_heap", "_set", "_tickets")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Alarm]] = []
        self._tickets = 0
        self._set = 0  # alarms with a time set: the heap's live entries
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._due = 0.0

    def __len__(self) -> int:
        """How many alarms have a time set."""
        return self._set

    def set(self, alarm: Alarm, when: float) -> None:
        """Call ``alarm.fire()`` at ``when`` (the running loop's ``time()``), instead of any time
        set before."""
        if alarm._ticket == 0:
            self._set += 1
        self._tickets += 1
        alarm._ticket = self._tickets
        heapq.heappush(self._heap, (when, self._tickets, alarm))
        if self._handle is None or when < self._due:
            self._arm(when)
        elif len(self._heap) > 64 and len(self._heap) > 2 * self._set:
            self._sweep()

    def cancel(self, alarm: Alarm) -> None:
        """Call it off, if set."""
        if alarm._ticket == 0:
            return
        alarm._ticket = 0
        self._set -= 1
        if self._set == 0:  # nothing left: hold no stale entries (and none of what they reference)
            self._heap.clear()
            self._disarm()

    def _sweep(self) -> None:
        self._heap[:] = [entry for entry in self._heap if entry[2]._ticket == entry[1]]
        heapq.heapify(self._heap)

    def _arm(self, when: float) -> None:
        self._disarm()
        self._due = when
        self._handle = asyncio.get_running_loop().call_at(when, self._fired)

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fired(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        heap, last = self._heap, self._tickets  # alarms set while these fire wait for the next round
        limit = loop.time() + DUE_WITHIN_S
        while heap and heap[0][0] <= limit and heap[0][1] <= last:
            _, ticket, alarm = heapq.heappop(heap)
            if alarm._ticket != ticket:
                continue  # set again, or cancelled, since this entry
            alarm._ticket = 0
            self._set -= 1
            try:
                alarm.fire()
            except Exception as exc:  # as the loop reports a failing callback, and go on with the rest
                loop.call_exception_handler({"message": "an alarm failed", "exception": exc, "alarm": alarm})
        while heap and heap[0][2]._ticket != heap[0][1]:
            heapq.heappop(heap)
        if heap and (self._handle is None or heap[0][0] < self._due):  # an alarm fired may have armed it
            self._arm(heap[0][0])
