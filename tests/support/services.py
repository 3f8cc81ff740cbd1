"""Services built as C{makeService} builds them (L{nexusws.assemble.make_sessions}):
the specs the options stage reads (L{read_config}, L{builtin_specs}), then
L{build_services} on the reactor and launcher a test gives."""

from nexusws.sessions.builtin import builtin_specs
from nexusws.sessions.config import build_services, read_config


def config_services(path, reactor, launcher, system=None):
    """The running services of the service config file C{path}.

    @raise StartupError: as L{read_config} or L{build_services} raise it."""
    return build_services(read_config(path), reactor, launcher, system=system)


def builtin_services(specs, reactor, launcher, executables, system=None):
    """The running built-in services C{specs} (C{[(app, count)]}) asks for."""
    return build_services(builtin_specs(specs, executables), reactor, launcher, system=system)
