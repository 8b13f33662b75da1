"""One loop timer for "nothing happened for N seconds": marks postpone it, it fires once, start() re-arms it."""

from __future__ import annotations

import asyncio

from asr_daemon.quiet_timer import QuietTimer


async def test_fires_once_after_the_quiet_time() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = QuietTimer(0.2, lambda: fired.append(loop.time()))
    started = loop.time()
    timer.start()
    await asyncio.sleep(0.5)
    assert len(fired) == 1 and 0.18 < fired[0] - started < 0.45
    assert not timer.running


async def test_marks_postpone_it_with_a_single_loop_timer() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = QuietTimer(0.2, lambda: fired.append(loop.time()))
    timer.start()
    for _ in range(6):  # 0.6 s of events 0.1 s apart
        await asyncio.sleep(0.1)
        timer.mark()
    last_mark = loop.time()
    assert fired == []
    await asyncio.sleep(0.4)
    assert len(fired) == 1 and 0.18 < fired[0] - last_mark < 0.35


async def test_start_rearms_from_the_last_mark_and_cancel_stops_it() -> None:
    fired: list[int] = []
    timer = QuietTimer(0.1, lambda: fired.append(1))
    timer.start()
    await asyncio.sleep(0.25)
    assert fired == [1]
    timer.mark()
    timer.start()
    timer.start()  # armed already: still one timer
    await asyncio.sleep(0.25)
    assert fired == [1, 1]
    timer.mark()
    timer.start()
    timer.cancel()
    await asyncio.sleep(0.25)
    assert fired == [1, 1] and not timer.running
