"""The bench's RFB service (figure 10): every instance is the bench's RFB backend.

It starts nothing: C{start} names the port of C{backend.py --rfb} (the
service's C{port} option), already listening. A WebSocket presenting a token
of this service is a session tunnel, so nexusws follows its client's RFB
messages for the idle limit (nexusws.activity), which is what figure 10 measures.
"""

from nexusws.services import RemoteServiceScript


class RfbSession(RemoteServiceScript):
    def start(self, index, options):
        return ("127.0.0.1", int(self._common_options["port"]))

    def stop(self, index):
        return None
