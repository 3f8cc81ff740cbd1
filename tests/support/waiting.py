"""Polling real processes: wait until a condition holds, or fail naming what was awaited.

L{wait_until} and L{poke_until_logged} block; L{wait_until_async} and L{wait_steady}
poll on the running asyncio loop, so that its other tasks (a client, a writer) go on
meanwhile.
"""

import asyncio
import re
import time


def wait_until(predicate, timeout, what, interval=0.05):
    """Poll C{predicate} until it is true; fail after C{timeout} seconds naming C{what}."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def poke_until_logged(gw, poke, pattern, timeout=10, interval=0.2):
    """Call C{poke()} until gateway C{gw}'s log has a line matching C{pattern}; return the
    match. For a change the gateway notices only when used (a file it re-reads at most
    every so often): C{poke} uses it, changes nothing, and returns whether the answer
    was as it must be whether or not the change was seen (a false one fails at once)."""
    regex = re.compile(pattern, re.MULTILINE)

    def poked():
        assert poke(), "a poke was not answered as it must be"
        return regex.search(gw.log)

    return wait_until(poked, timeout, f"a log line matching {pattern!r} (poked meanwhile)", interval)


async def wait_until_async(predicate, timeout, what, interval=0.05):
    """L{wait_until} on the running event loop: C{predicate} is polled between its other tasks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(interval)


async def wait_steady(value, quiet, timeout, what, interval=0.05):
    """Poll C{value()} on the running event loop until it has changed and then not
    changed for C{quiet} seconds (a transfer that started, then flow control stopped
    it); return it. Fail after C{timeout} seconds (it never moved, or kept moving),
    naming C{what}. C{value} may raise to fail at once (the transfer ended: it was
    never held back)."""
    deadline = time.monotonic() + timeout
    first = last = value()
    since = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        now, current = time.monotonic(), value()
        if current != last:
            last, since = current, now
        elif current != first and now - since >= quiet:
            return current
        if now > deadline:
            state = "never moved" if current == first else "still moving"
            raise AssertionError(f"not within {timeout}s: {what} ({state}: {current!r})")
