"""The public import path of the script API, as in the reference: a thin re-export.

Service scripts write ``from nexusws.services import RemoteServiceScript``;
the API itself lives in L{nexusws.sessions.script}. Nothing in nexusws
imports this module.
"""

from nexusws.sessions.instances import ServiceError
from nexusws.sessions.script import RemoteServiceScript

__all__ = ["RemoteServiceScript", "ServiceError"]
