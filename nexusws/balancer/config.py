"""The balancer's configuration: a Webots session server's C{session.json}.

Webots' keys, with Webots' defaults::

  port                local port the balancer listens on (1999)
  server              fully qualified name of the balancer, for links in e-mails
  ssl                 nodes and clients use https/wss (true)
  portRewrite         the front proxy routes /<port>/... (true): links read server/port
  simulationServers   the nodes: each the HTTP address of a nexusws node's /v1 API,
                      "host:port" (or a full http(s):// URL, a path prefix allowed)
  administrator       e-mail address notified when a node fails, returns, fills up, frees up
  mailServer, mailServerPort, mailSender, mailSenderUser, mailSenderPassword
                      SMTP for those e-mails (STARTTLS and login when a password is given)
  logDir              directory of the log file (session/output.log under it)
  debug               log to standard output instead

nexusws's own keys::

  pollInterval        seconds between polls of every node (5, as Webots)
  pollTimeout         seconds a node has to answer a poll (2; at most pollInterval)
  loadThreshold       a node at this load (0-100) or more takes no new session (95)
  securityToken       the nodes' security token, sent with every call to them
  mailInterval        least seconds between two e-mails about one node (600)
  mailServerCA        PEM file of the CA that signed the mail server's certificate
                      (default: the system's CAs)

Every mistake is one line naming the file and the key (L{ConfigError}).
"""

import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from nexusws.convert import DuplicateKey, unique_keys

DEFAULTS = {"port": 1999, "ssl": True, "portRewrite": True, "debug": False, "logDir": "log",
            "pollInterval": 5.0, "pollTimeout": 2.0, "loadThreshold": 95.0, "mailInterval": 600.0}
WEBOTS_KEYS = {"port", "server", "ssl", "portRewrite", "simulationServers", "administrator",
               "mailServer", "mailServerPort", "mailSender", "mailSenderUser", "mailSenderPassword",
               "logDir", "debug"}
OWN_KEYS = {"pollInterval", "pollTimeout", "loadThreshold", "securityToken", "mailInterval",
            "mailServerCA"}


class ConfigError(Exception):
    """The configuration cannot be used; the message (one line) names the file and key."""


@dataclass
class Mail:
    """Where administrator e-mails go, and how."""

    administrator: str
    server: str
    port: int
    sender: str
    user: str | None
    password: str | None
    interval: float
    ca: str | None = None


@dataclass
class Config:
    path: str
    port: int
    server: str | None
    ssl: bool
    port_rewrite: bool
    nodes: list  # base URLs, no trailing slash
    log_dir: str
    debug: bool
    poll_interval: float
    poll_timeout: float
    load_threshold: float
    security_token: str | None
    mail: Mail | None
    notes: list = field(default_factory=list)  # warnings to log at start-up

    def monitor_url(self):
        """The balancer's /monitor page as e-mails link it (Webots' form)."""
        scheme = "https" if self.ssl else "http"
        separator = "/" if self.port_rewrite else ":"
        return f"{scheme}://{self.server or 'localhost'}{separator}{self.port}/monitor"


def load(path):
    """Read and check C{path}; return a L{Config}.

    @raise ConfigError: one line naming the file and, where it applies, the key.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f, object_pairs_hook=unique_keys)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except DuplicateKey as e:
        raise ConfigError(f"{path}: key {str(e)!r} is given twice") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the configuration must be a JSON object")
    return parse(raw, path)


def parse(raw, path="session.json"):
    """A L{Config} from the decoded JSON object C{raw} (see L{load})."""
    def fail(key, problem):
        raise ConfigError(f"{path}: {key!r} {problem}")

    values = {**DEFAULTS, **raw}
    notes = [f"{path}: unknown key {key!r} ignored" for key in raw
             if key not in WEBOTS_KEYS | OWN_KEYS]

    def boolean(key):
        if not isinstance(values[key], bool):
            fail(key, f"must be true or false, not {values[key]!r}")
        return values[key]

    def number(key, low, high=None):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < low or (
                high is not None and v > high):
            fail(key, f"must be a number from {low}" + (f" to {high}" if high is not None else "")
                 + f", not {v!r}")
        return v

    def text(key, required=False):
        v = values.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v.strip():
            fail(key, "must be a non-empty string" if key in raw else "is missing")
        return v.strip()

    port = number("port", 0, 65535)
    if not isinstance(port, int):
        fail("port", f"must be a whole number, not {port!r}")
    ssl = boolean("ssl")
    servers = values.get("simulationServers")
    if not isinstance(servers, list) or not servers:
        fail("simulationServers", "must be a non-empty list of node addresses (host:port)"
             if "simulationServers" in raw else "is missing: list the nodes (host:port)")
    nodes = []
    for i, entry in enumerate(servers):
        nodes.append(node_url(entry, ssl, lambda problem, i=i: fail(f"simulationServers[{i}]", problem)))
    if len(set(nodes)) != len(nodes):
        fail("simulationServers", "names a node twice")
    interval = number("pollInterval", 0.1)
    timeout = number("pollTimeout", 0.05, interval)
    mail = None
    administrator = text("administrator")
    if administrator is not None:
        mail_server, sender = text("mailServer"), text("mailSender")
        if mail_server is None or sender is None:
            notes.append(f"{path}: 'administrator' is set but "
                         f"{'mailServer' if mail_server is None else 'mailSender'} is not: "
                         "no e-mail will be sent")
        else:
            mail_port = values.get("mailServerPort", 0)
            if isinstance(mail_port, bool) or not isinstance(mail_port, int) or not 0 <= mail_port <= 65535:
                fail("mailServerPort", f"must be a port number, not {mail_port!r}")
            ca = text("mailServerCA")
            if ca is not None:
                ca = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(ca))
                if not os.path.isfile(ca):
                    fail("mailServerCA", f"names no file: {ca}")
            mail = Mail(administrator, mail_server, mail_port or 25, sender, text("mailSenderUser"),
                        text("mailSenderPassword"), number("mailInterval", 0), ca)
    log_dir = values["logDir"]
    if not isinstance(log_dir, str) or not log_dir:
        fail("logDir", "must be a directory path")
    log_dir = os.path.expandvars(os.path.expanduser(log_dir))
    if not os.path.isabs(log_dir):
        log_dir = os.path.join(os.path.dirname(os.path.abspath(path)), log_dir)
    return Config(
        path=path, port=port, server=text("server"), ssl=ssl, port_rewrite=boolean("portRewrite"),
        nodes=nodes, log_dir=log_dir, debug=boolean("debug"), poll_interval=float(interval),
        poll_timeout=float(timeout), load_threshold=float(number("loadThreshold", 0, 100)),
        security_token=text("securityToken"), mail=mail, notes=notes,
    )


def node_url(entry, ssl, fail):
    """The base URL of a node's HTTP server from a C{simulationServers} entry."""
    if not isinstance(entry, str) or not entry.strip():
        fail(f"must be a node address (host:port), not {entry!r}")
    text = entry.strip().rstrip("/")
    if "://" not in text:
        text = ("https://" if ssl else "http://") + text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        fail(f"{entry!r} is not a node address ({e})")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        fail(f"{entry!r} is not a node address (host:port, or an http(s):// URL)")
    return text
