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
