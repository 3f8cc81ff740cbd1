"""The tunnel's data path on both of its implementations (L{nexusws.internals}).

C{@both_paths} runs a test twice: C{[fast]} on the library internals as the
start-up check finds them (as a gateway runs), C{[public]} on the public-API
fallback the gateway switches to when one of them is missing. The key bridge
and pipes tests carry it: bytes flow exactly both ways, flow control, the close
rules.
"""

import pytest

from nexusws import internals


@pytest.fixture(params=["fast", "public"])
def data_path(request):
    """The data path the test runs on: C{"fast"} (the module as it is), or C{"public"}
    (the fallback forced for the test, checked to hold throughout; the module is as it
    was after)."""
    if request.param == "fast":
        yield "fast"
        return
    fast = internals.FAST
    internals.set_fast(False)
    try:
        yield "public"
        assert not internals.FAST, "run on the fallback throughout"
    finally:
        internals.set_fast(fast)


#: Runs a test on both data paths (see L{data_path}).
both_paths = pytest.mark.usefixtures("data_path")
