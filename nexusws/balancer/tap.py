"""C{twistd nexusws-balancer --config session.json}: the session balancer (see L{nexusws.balancer})."""

import os
import time

from twisted.application import service
from twisted.python import usage
from twisted.web import server

from nexusws.balancer import config as _config
from nexusws.balancer.mail import Mailer
from nexusws.balancer.nodes import Cluster
from nexusws.balancer.web import Root
from nexusws.errors import StartupError, say
from nexusws.gateway import GatewayService, ListenerService, parse_endpoint
from nexusws.logs import logger
from nexusws.web import log_request

_log = logger("nexusws.balancer")


class Options(usage.Options):
    synopsis = "--config session.json [--listen ENDPOINT]"
    longdesc = ("Session balancer in front of several nexusws nodes, configured like Webots' "
                "session server (session.json).")
    optParameters = [
        ["config", "c", None, "The configuration file (Webots' session.json keys)."],
        ["listen", None, None, "Endpoint to listen on (default: tcp:PORT, PORT from the "
                               "configuration), e.g. tcp:1999:interface=127.0.0.1."],
        ["verbose", "v", 0, "1: also debug lines.", int],
    ]

    def parseOptions(self, options=None):
        """As the gateway's: under twistd a mistake is one line and exit status 2
        (twistd itself would print its whole usage text and exit 0)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            say("twistd nexusws-balancer", e)
            raise SystemExit(2) from None

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config is missing: give the session.json file")
        try:
            self["parsed"] = _config.load(self["config"])
        except _config.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        cfg = self["parsed"]
        self["log_file"] = None
        if not cfg.debug:
            self["log_file"] = os.path.join(cfg.log_dir, "session", "output.log")
            try:
                os.makedirs(os.path.dirname(self["log_file"]), exist_ok=True)
            except OSError as e:
                raise usage.UsageError(f"{cfg.path}: 'logDir': cannot create "
                                       f"{os.path.dirname(self['log_file'])}: {e.strerror}") from None
        if self["listen"] is None:
            self["listen"] = f"tcp:{cfg.port}"
        try:  # parsed only: makeService parses again with its reactor
            parse_endpoint(None, "--listen", self["listen"])
        except StartupError as e:
            raise usage.UsageError(str(e)) from None


class Site(server.Site):
    """twisted.web's site with a nexusws gateway's access log (secret query values masked)."""

    def log(self, request):
        log_request(request, _log)


class ClusterService(service.Service):
    """Polls the nodes while the balancer runs."""

    def __init__(self, cluster, mailer=None):
        self.cluster, self.mailer = cluster, mailer

    def startService(self):
        super().startService()
        self.cluster.started = time.time()
        self.cluster.start()

    def stopService(self):
        super().stopService()
        self.cluster.stop()
        if self.mailer is not None:
            self.mailer.stop()


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    cfg = options["parsed"]
    top = GatewayService(verbose=options["verbose"], log_file=options["log_file"], notes=cfg.notes,
                         reactor=reactor)
    mailer = None if cfg.mail is None else Mailer(cfg.mail, reactor, cfg.monitor_url())
    sockets = []  # the WebSocket factory, once the resource tree is made
    cluster = Cluster(cfg, reactor, on_availability=lambda available: sockets[0].broadcast(available),
                      on_event=None if mailer is None else mailer.notify)
    root = Root(cluster, reactor)
    sockets.append(root.sockets)
    ClusterService(cluster, mailer).setServiceParent(top)
    site = Site(root)
    site.noisy = False
    endpoint = parse_endpoint(reactor, "--listen", options["listen"])
    ListenerService("--listen", options["listen"], endpoint, site, "http").setServiceParent(top)
    return top
