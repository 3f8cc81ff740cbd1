"""A script whose start() raises: the session must fail with a clear reason."""

from nexusws.services import RemoteServiceScript


class Raising(RemoteServiceScript):
    def start(self, index, options):
        raise RuntimeError("this test script always refuses to start")
