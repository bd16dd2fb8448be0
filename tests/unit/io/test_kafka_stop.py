"""engine.io.kafka.stop_client: how a stopping caller meets aiokafka's stop()."""

from __future__ import annotations

import asyncio

import pytest


class _Fetching:
    """stop() as aiokafka 0.14's consumer does it: cancel the fetch task, then
    await it, so the fetch task's CancelledError comes out of stop()."""

    async def start(self):
        self.task = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)

    async def stop(self):
        self.task.cancel()
        await self.task


def test_stop_client_swallows_an_inner_tasks_cancellation_but_not_its_callers():
    from engine.io.kafka import stop_client

    async def main():
        client = _Fetching()
        await client.start()
        with pytest.raises(asyncio.CancelledError):
            await client.stop()                    # what the bridge met at shutdown
        client = _Fetching()
        await client.start()
        await stop_client(client, 5)               # stopping anyway: no CancelledError

        async def stuck():
            await asyncio.sleep(3600)

        class Slow:
            stop = staticmethod(stuck)

        await stop_client(Slow(), 0.05)            # a timeout is swallowed too
        outer = asyncio.ensure_future(stop_client(Slow()))
        await asyncio.sleep(0.01)
        outer.cancel()                             # the caller itself cancelled: re-raised
        with pytest.raises(asyncio.CancelledError):
            await outer
    asyncio.run(main())
