from __future__ import annotations

import asyncio
import threading

from sluiceway.streams.shutdown import ShutdownSignal


async def test_waiters_wake_when_triggered_from_another_thread() -> None:
    signal = ShutdownSignal()
    waiters = [asyncio.create_task(signal.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    threading.Thread(target=signal.trigger).start()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert signal.triggered


async def test_waiting_after_the_trigger_returns_at_once() -> None:
    signal = ShutdownSignal()
    signal.trigger()
    await asyncio.wait_for(signal.wait(), 1)


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    signal = ShutdownSignal()
    waiter = asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert signal._waiters == []
    signal.trigger()
