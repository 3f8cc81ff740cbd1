"""Reading Deferreds that have already fired, in tests that run on a Clock."""

from twisted.python.failure import Failure


def result_of(d):
    """The result a Deferred has already fired with (its failure is raised)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d, kind=None):
    """The L{Failure} a Deferred has already fired with (it is consumed: C{d} then holds
    C{None}). With C{kind} (an exception class), the failure must be one of it."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    if kind is not None:
        assert results[0].check(kind), f"expected {kind.__name__}, got {results[0]!r}"
    return results[0]
