"""A real SMTP server on loopback for tests: aiosmtpd in a thread, STARTTLS required
before AUTH, one login accepted; it keeps what it receives."""

import asyncio
import ssl
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Received:
    def __init__(self):
        self.messages = []  # (mail_from, rcpt_tos, content bytes, tls used, authenticated login)
        self.event = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        with self.event:
            login = session.auth_data if session.authenticated else None
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                  session.ssl is not None, login))
            self.event.notify_all()
        return "250 OK"

    def wait(self, count, timeout):
        with self.event:
            self.event.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


class SmtpServer:
    """C{SmtpServer(cert, key, login, password)}; C{.port}, C{.received}, C{.close()}."""

    def __init__(self, cert, key, login=b"bot", password=b"pw", tls=True):
        self.received = Received()
        self.loop = asyncio.new_event_loop()
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(cert), str(key))

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
                login, password)
            # handled=False: aiosmtpd itself answers 535 to a refused login.
            return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

        def protocol():
            return SMTP(self.received, hostname="127.0.0.1", tls_context=context,
                        require_starttls=tls, authenticator=authenticate, auth_require_tls=tls,
                        auth_required=tls)

        self.server = self.loop.run_until_complete(self.loop.create_server(protocol, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
