"""Polling real processes: wait until a condition holds, or fail naming what was awaited."""

import time


def wait_until(predicate, timeout, what):
    """Poll C{predicate} until it is true; fail after C{timeout} seconds naming C{what}."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
