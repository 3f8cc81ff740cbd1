"""E-mail to the administrator when a node goes down, comes back, fills up or frees up.

The messages are Webots' session server's (its subjects, its text, a link to
/monitor), sent with Twisted's SMTP client: never blocking, with STARTTLS and
login when C{mailSenderPassword} is set (the certificate checked against the
system's CAs, or C{mailServerCA}), and rate-limited per node: after an e-mail
about a node, the next one about it waits C{mailInterval} seconds and then
tells only how things stand, with how many changes it sums up. A node that
flaps sends one e-mail per interval, not one per flap. A failure to send is
one log line; the balancer goes on.
"""

from io import BytesIO

from twisted.internet import defer, ssl
from twisted.mail.smtp import ESMTPSenderFactory, SMTPClientError

from nexusws.balancer.nodes import SUBJECTS
from nexusws.logs import logger, one_line

_log = logger("nexusws.balancer.mail")

SEND_TIMEOUT = 60.0


def message(mail, subject, text, monitor_url):
    """The e-mail as Webots' session server writes it (bytes, lines ending in LF:
    Twisted's SMTP client sends them as CRLF)."""
    return (f"From: Simulation Server <{mail.sender}>\n"
            f"To: Administrator <{mail.administrator}>\n"
            f"Subject: {subject}\n"
            "Content-Type: text/plain; charset=utf-8\n\n"
            f"Hello,\n\n{text}.\nCheck it at {monitor_url}\n\n-Simulation Server\n"
            ).encode()


def why(error):
    """One line on a failure to send; never the SMTP transcript Twisted appends to its
    errors, which holds the login (base64: the password, readable)."""
    if isinstance(error, SMTPClientError):
        resp = error.resp.decode("utf-8", "replace") if isinstance(error.resp, bytes) else str(error.resp)
        first = (resp.splitlines() or [""])[0]
        return one_line(f"{error.code} {first}" if error.code else first) or type(error).__name__
    return one_line(error) or type(error).__name__


def trust(mail):
    """The TLS options for STARTTLS with the mail server."""
    if mail.ca is None:
        return ssl.optionsForClientTLS(mail.server)
    with open(mail.ca, "rb") as f:
        return ssl.optionsForClientTLS(mail.server, trustRoot=ssl.Certificate.loadPEM(f.read()))


def smtp_send(reactor, mail, data):
    """Send C{data} to the administrator; a Deferred (cancellable) that fires once sent."""
    done = defer.Deferred()
    secret = mail.password.encode("utf-8") if mail.password else None
    user = (mail.user or mail.sender).encode("utf-8") if secret else None
    factory = ESMTPSenderFactory(
        user, secret, mail.sender, [mail.administrator], BytesIO(data), done,
        retries=0, timeout=SEND_TIMEOUT, contextFactory=trust(mail) if secret else None,
        heloFallback=True, requireAuthentication=bool(secret), requireTransportSecurity=bool(secret),
        hostname=mail.server,
    )
    factory.noisy = False
    connector = reactor.connectTCP(mail.server, mail.port, factory, timeout=SEND_TIMEOUT)

    def cancel(_):
        factory.sendFinished = True
        if factory.currentProtocol is not None:
            factory.currentProtocol.transport.abortConnection()
        else:
            connector.disconnect()

    def timed_out(result, seconds):
        raise defer.TimeoutError(f"no answer from the mail server within {seconds:g} s")

    result = defer.Deferred(cancel)
    done.chainDeferred(result)
    return result.addTimeout(SEND_TIMEOUT, reactor, onTimeoutCancel=timed_out)


class Mailer:
    """Sends node events to the administrator, at most one e-mail per node per C{interval}.

    @param send: C{(reactor, mail, data)} -> Deferred (default: L{smtp_send}).
    """

    def __init__(self, mail, reactor, monitor_url, send=smtp_send):
        self.mail, self.reactor, self.monitor_url, self._send = mail, reactor, monitor_url, send
        self._last = {}  # node name -> when its last e-mail went
        self._held = {}  # node name -> [event, text, how many it sums up]
        self._timers = {}
        self.sent = []  # (node, subject): what went, for the log and the tests

    def notify(self, node, event, text):
        name = node.name
        last = self._last.get(name)
        now = self.reactor.seconds()
        if last is None or now - last >= self.mail.interval:
            return self._post(name, event, text)
        held = self._held.get(name)
        self._held[name] = [event, text, (held[2] if held else 0) + 1]
        if name not in self._timers:
            self._timers[name] = self.reactor.callLater(last + self.mail.interval - now,
                                                        self._release, name)
        _log.info("e-mail about {node} held back until {seconds:.0f} s after the last one",
                  node=name, seconds=self.mail.interval)
        return None

    def _release(self, name):
        self._timers.pop(name, None)
        event, text, count = self._held.pop(name)
        if count > 1:
            text += f" ({count} changes since the last e-mail about it)"
        self._post(name, event, text)

    def _post(self, name, event, text):
        self._last[name] = self.reactor.seconds()
        subject = SUBJECTS[event]
        d = defer.maybeDeferred(self._send, self.reactor, self.mail,
                                message(self.mail, subject, text, self.monitor_url))

        def sent(_):
            self.sent.append((name, subject))
            _log.info("e-mail sent to {to}: {subject}", to=self.mail.administrator, subject=subject)

        def failed(failure):
            _log.error("cannot send e-mail to {to} through {server}:{port}: {why}",
                       to=self.mail.administrator, server=self.mail.server, port=self.mail.port,
                       why=why(failure.value))

        return d.addCallbacks(sent, failed)

    def stop(self):
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
