"""What the abuse suites share: many concurrent connections attacking a server for a bounded time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def attack_for(seconds: float, connections: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Run `one(i)` again and again on `connections` concurrent tasks until `seconds` have passed."""

    async def main() -> None:
        deadline = time.monotonic() + seconds

        async def again(i: int) -> None:
            while time.monotonic() < deadline:
                await one(i)

        await asyncio.gather(*(again(i) for i in range(connections)))

    asyncio.run(main())
