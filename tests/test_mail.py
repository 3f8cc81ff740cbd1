"""The balancer's e-mail to the administrator: Webots' messages, rate-limited per node,
sent with Twisted's SMTP client (STARTTLS and login) to a real SMTP server on loopback."""

import email

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nexusws.balancer import config
from nexusws.balancer.mail import Mailer, message
from nexusws.balancer.nodes import BACK, DOWN, FULL
from support.cluster import Node, get, start_balancer, stop
from support.smtp_server import SmtpServer
from support.tls import make_cert
from support.waiting import wait_until

MAIL = {"administrator": "admin@example.com", "mailServer": "127.0.0.1", "mailServerPort": 25,
        "mailSender": "balancer@example.com", "mailSenderUser": "bot", "mailSenderPassword": "pw"}


class Named:
    def __init__(self, name):
        self.name = name


def mailer(interval=600, fail=False):
    cfg = config.parse({"simulationServers": ["n:1"], "server": "sessions.example.com",
                        "mailInterval": interval, **MAIL})
    clock, sent = Clock(), []

    def send(reactor, mail, data):
        if fail:
            return defer.fail(ConnectionRefusedError("Connection refused"))
        sent.append(email.message_from_bytes(data))
        return defer.succeed(None)

    return Mailer(cfg.mail, clock, cfg.monitor_url(), send=send), clock, sent


def test_the_message_is_webots_own():
    cfg = config.parse({"simulationServers": ["n:1"], "server": "sessions.example.com", **MAIL})
    m = email.message_from_bytes(message(cfg.mail, "Simulation server not responding",
                                         "n1 simulation server may be down", cfg.monitor_url()))
    assert m["From"] == "Simulation Server <balancer@example.com>"
    assert m["To"] == "Administrator <admin@example.com>"
    assert m["Subject"] == "Simulation server not responding"
    assert m.get_payload() == ("Hello,\n\nn1 simulation server may be down.\nCheck it at "
                               "https://sessions.example.com/1999/monitor\n\n-Simulation Server\n")


def test_one_e_mail_per_node_per_interval_then_one_that_sums_up_the_changes():
    m, clock, sent = mailer(interval=600)
    a, b = Named("a:1"), Named("b:1")
    m.notify(a, DOWN, "a down")
    m.notify(b, FULL, "b full")
    assert [s["Subject"] for s in sent] == ["Simulation server not responding",
                                            "Simulation server reached maximum load"]
    for event, text in [(BACK, "a back"), (DOWN, "a down again"), (BACK, "a back again")]:
        clock.advance(60)
        m.notify(a, event, text)
    assert len(sent) == 2, "a flapping node is held back"
    clock.advance(600 - 180)
    assert len(sent) == 3
    assert sent[2]["Subject"] == "Simulation server working again"
    assert "a back again (3 changes since the last e-mail about it)." in sent[2].get_payload()
    clock.advance(600)
    m.notify(a, DOWN, "a down")
    assert len(sent) == 4, "after a quiet interval: at once"
    m.stop()
    assert not clock.getDelayedCalls()


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_a_failure_to_send_is_logged_and_never_raised():
    m, clock, sent = mailer(fail=True)
    result = m.notify(Named("a:1"), DOWN, "a down")
    assert result.called and sent == [] and m.sent == []


@pytest.fixture
def smtp(tmp_path):
    cert, key = make_cert(tmp_path, "smtp")
    servers = []

    def start(**kw):
        s = SmtpServer(cert, key, **kw)
        servers.append(s)
        return s

    start.cert = cert
    yield start
    for s in servers:
        s.close()


def test_a_dead_node_and_its_return_are_mailed_over_starttls_with_login(gateway, tmp_path, smtp):
    server = smtp()
    node = Node(gateway, tmp_path, "n0")
    p, url, log = start_balancer(tmp_path, [node], {**MAIL, "mailServerPort": server.port,
                                                    "mailServerCA": str(smtp.cert)})
    node.gw.kill()
    (down,) = server.received.wait(1, 10)
    mail_from, rcpt, content, tls, login = down
    assert (mail_from, rcpt, tls, login) == ("balancer@example.com", ["admin@example.com"], True, b"bot")
    text = email.message_from_bytes(content)
    assert text["Subject"] == "Simulation server not responding"
    assert f"{node.http} simulation server may be down" in text.get_payload()
    assert "Check it at http://balancer.test/0/monitor" in text.get_payload()
    Node(gateway, tmp_path, "n0", http_listen=f"tcp:{node.gw.http_port}:interface=127.0.0.1")
    messages = server.received.wait(2, 10)
    assert email.message_from_bytes(messages[1][2])["Subject"] == "Simulation server working again"
    assert stop(p) == 0


@pytest.mark.parametrize("server_kw", [{"password": b"other"}, {"tls": False}],
                         ids=["wrong-password", "no-starttls"])
def test_a_refused_login_or_a_server_without_starttls_is_one_log_line_and_nothing_sent(
        gateway, tmp_path, smtp, server_kw):
    """With a password configured, nexusws never logs in without TLS (the password would go
    in clear); a refused login is reported. Either way: one line, and the balancer goes on."""
    server = smtp(**server_kw)
    node = Node(gateway, tmp_path, "n0")
    p, url, log = start_balancer(tmp_path, [node], {**MAIL, "mailServerPort": server.port,
                                                    "mailServerCA": str(smtp.cert)})
    node.gw.kill()
    wait_until(lambda: "cannot send e-mail to admin@example.com" in log.read_text(), 15, "logged")
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if "cannot send e-mail" in ln]
    assert len(lines) == 1 and "Traceback" not in text
    assert "cHc=" not in text and "Ym90" not in text, "no login, not even in base64"
    assert lines[0].endswith(("535 5.7.8 Authentication credentials invalid",
                              "Server does not support secure communication via TLS / SSL")), lines
    assert get(url + "/", parse=False) == "0", "the balancer goes on"
    assert server.received.messages == []
    assert stop(p) == 0
