"""The public import path of the script API, as in the reference: a thin re-export.

Service scripts write ``from nexusws.services import RemoteServiceScript``;
the API itself lives in L{nexusws.sessions.script}. Nothing in nexusws
imports this module.
"""

from nexusws.sessions.instances import Service, ServiceError
from nexusws.sessions.script import RemoteServiceScript
from nexusws.sessions.slurmscript import SlurmScript

#: What scripts import from here: the base classes (a script run here, a Slurm job's), the
#: error a helper raises, and the running service (C{self._nexus}), as this module exported
#: them before nexusws.sessions.
__all__ = ["RemoteServiceScript", "Service", "ServiceError", "SlurmScript"]
