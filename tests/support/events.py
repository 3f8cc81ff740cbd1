"""Log events: what a call logs."""

from twisted.logger import globalLogPublisher


def events_of(fn):
    """C{(fn(), [the log events published while it ran])}."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        result = fn()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return result, events
