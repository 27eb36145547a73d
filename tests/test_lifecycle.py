"""Stopping background tasks."""

from __future__ import annotations

import asyncio

from reactor.lifecycle import cancel_and_wait


def test_cancel_survives_swallowed_cancel() -> None:
    steps: list[str] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            # As asyncio.wait_for does in Python 3.11 when its inner future
            # completes at the moment of the cancellation.
            steps.append("swallowed")
        await asyncio.sleep(30)

    async def run() -> bool:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait(task), timeout=5)
        return task.cancelled()

    assert asyncio.run(run()) is True
    assert steps == ["swallowed"]
