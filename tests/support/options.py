"""The command line as the gateway reads it: L{parse} builds L{nexusws.tap.Options}."""

from nexusws import tap


def parse(*args):
    """The L{tap.Options} parsed from C{args}, exactly as given (raises L{usage.UsageError})."""
    options = tap.Options()
    options.parseOptions(list(args))
    return options
