"""Many alarms on one loop timer: order, replacing, cancelling, re-setting while firing, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sluiceway.streams.alarms import Alarm, Alarms


class Fired(list[str]):
    """The names of the alarms fired, in order; :meth:`reach` waits until there are ``count``."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def add(self, name: str) -> None:
        self.append(name)
        self.changed.set()

    async def reach(self, count: int, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            while len(self) < count:
                self.changed.clear()
                await self.changed.wait()


class Recorder(Alarm):
    """Adds its name to ``fired`` when it fires, then runs ``then`` (if any)."""

    __slots__ = ("fired", "name", "then")

    def __init__(self, name: str, fired: Fired, then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.name = name
        self.fired = fired
        self.then = then

    def fire(self) -> None:
        self.fired.add(self.name)
        if self.then is not None:
            self.then()


def later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_alarms_fire_in_time_order_on_one_loop_timer() -> None:
    alarms, fired = Alarms(), Fired()
    a, b, c = (Recorder(name, fired) for name in "abc")
    alarms.set(a, later(0.06))
    alarms.set(b, later(0.02))
    alarms.set(c, later(0.04))
    assert len(alarms) == 3 and a.is_set
    await fired.reach(3)
    assert fired == ["b", "c", "a"]
    assert len(alarms) == 0 and not a.is_set


async def test_setting_again_replaces_the_time_and_it_fires_once() -> None:
    alarms, fired = Alarms(), Fired()
    a, b = Recorder("a", fired), Recorder("b", fired)
    alarms.set(a, later(0.01))
    alarms.set(a, later(0.05))  # later than b now
    alarms.set(b, later(0.03))
    assert len(alarms) == 2
    await fired.reach(2)
    await asyncio.sleep(0.03)
    assert fired == ["b", "a"]


async def test_a_cancelled_alarm_never_fires_and_nothing_stale_is_held() -> None:
    alarms, fired = Alarms(), Fired()
    a, b = Recorder("a", fired), Recorder("b", fired)
    alarms.set(a, later(0.01))
    alarms.set(b, later(0.02))
    alarms.cancel(a)
    alarms.cancel(a)  # twice is harmless
    await fired.reach(1)
    assert fired == ["b"]
    await asyncio.sleep(0.02)
    assert fired == ["b"]
    alarms.set(a, later(10))
    alarms.cancel(a)
    assert len(alarms) == 0 and alarms._heap == [] and alarms._handle is None


async def test_an_earlier_alarm_set_after_a_later_one_fires_first() -> None:
    alarms, fired = Alarms(), Fired()
    late, early = Recorder("late", fired), Recorder("early", fired)
    alarms.set(late, later(5))
    alarms.set(early, later(0.01))
    await fired.reach(1)
    assert fired == ["early"]
    assert late.is_set
    alarms.cancel(late)


async def test_an_alarm_fired_that_sets_a_later_one_does_not_delay_an_earlier_one() -> None:
    alarms, fired = Alarms(), Fired()
    far = Recorder("far", fired)
    near = Recorder("near", fired)
    first = Recorder("first", fired, then=lambda: alarms.set(far, later(5)))
    alarms.set(first, later(0.01))
    alarms.set(near, later(0.05))
    await fired.reach(2, within=1)
    assert fired == ["first", "near"]
    alarms.cancel(far)


async def test_an_alarm_that_sets_itself_for_now_fires_in_the_next_round() -> None:
    loop = asyncio.get_running_loop()
    alarms, fired = Alarms(), Fired()
    rounds_between: list[int] = []  # loop callbacks run before each firing (one per round passed)
    ran: list[int] = []

    def again() -> None:
        rounds_between.append(len(ran))
        loop.call_soon(ran.append, 1)
        if len(fired) < 3:
            alarms.set(alarm, later(0))  # already due: must not fire again inside this round

    alarm = Recorder("a", fired, then=again)
    alarms.set(alarm, later(0.01))
    await fired.reach(3)
    assert fired == ["a", "a", "a"] and len(alarms) == 0
    assert rounds_between == [0, 1, 2]


async def test_a_failing_alarm_is_reported_and_the_others_still_fire() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    alarms, fired = Alarms(), Fired()

    def fail() -> None:
        raise RuntimeError("boom")

    alarms.set(Recorder("bad", fired, then=fail), later(0.01))
    alarms.set(Recorder("good", fired), later(0.01))
    await fired.reach(2)
    assert fired == ["bad", "good"]
    assert [type(context["exception"]) for context in reported] == [RuntimeError]
    loop.set_exception_handler(None)


async def test_moving_an_alarm_many_times_keeps_the_heap_small() -> None:
    alarms, fired = Alarms(), Fired()
    parked = [Recorder(f"p{i}", fired) for i in range(10)]
    for alarm in parked:
        alarms.set(alarm, later(60))
    moving = Recorder("m", fired)
    for i in range(1000):
        alarms.set(moving, later(30 + i * 0.001))  # later each time: no re-arm, stale entries pile
    assert len(alarms) == 11
    assert len(alarms._heap) <= 2 * 11 + 64
    for alarm in [*parked, moving]:
        alarms.cancel(alarm)
    assert alarms._heap == [] and fired == []


@pytest.mark.parametrize("count", [1, 50])
async def test_every_alarm_set_fires_exactly_once(count: int) -> None:
    alarms, fired = Alarms(), Fired()
    for i in range(count):
        alarms.set(Recorder(str(i), fired), later(0.001 * (i % 7)))
    await fired.reach(count)
    await asyncio.sleep(0.02)
    assert sorted(fired, key=int) == [str(i) for i in range(count)]
