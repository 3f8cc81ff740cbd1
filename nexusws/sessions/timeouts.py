"""Every time limit of a session's life, in seconds, in one place.

Values only: the modules that wait, poll or give up import them from here
(L{registry}, L{attach}, L{instances}, L{script}, L{builtin}, L{launcher}, L{stopping},
L{ports}, L{keeper}). Several are defaults that an option or a caller may
override (C{--start_timeout}, C{Service.grace}, a script's C{timeout=}).
"""

# --- starting -------------------------------------------------------------------

#: Unused for this long, a reservation expires (the registry's default).
RESERVATION_TIMEOUT = 300.0

#: From a WebSocket presenting its token until the instance's address accepts
#: connections, its start included (the registry's default; C{--start_timeout}).
START_TIMEOUT = 30.0

#: A built-in application (EnSight, EnVision) may take this long to open its VNC
#: port (the registry's start timeout, if shorter, ends the wait first).
APP_START_TIMEOUT = 120.0

#: A script's C{wait_for_port} gives up after this long unless told otherwise.
PORT_TIMEOUT = 30.0

#: C{wait_for_port} tries every C{QUICK_INTERVAL} for C{QUICK_PERIOD} (a session's
#: port usually opens within milliseconds), then every C{PORT_INTERVAL}.
QUICK_INTERVAL, QUICK_PERIOD, PORT_INTERVAL = 0.003, 1.0, 0.1

# --- stopping -------------------------------------------------------------------

#: From SIGTERM to SIGKILL, whenever processes are ended: an instance's children
#: and leftovers, a previous run's processes, what the sessions left at shutdown.
GRACE = 5.0

#: How often a stop looks whether the processes it signalled are gone.
POLL_INTERVAL = 0.1

#: A script's C{stop} may take this long; then what is left of the instance is ended.
SCRIPT_STOP_TIMEOUT = 30.0

#: A backend's stop may take this long; then the registry frees the index anyway.
STOP_TIMEOUT = 60.0

# --- while running --------------------------------------------------------------

#: An active instance whose WebSocket is lost (not ended on purpose) is kept this
#: long for the same token to re-attach (the registry's default; C{--reconnect_grace},
#: a service's C{options.reconnect_grace}; L{attach}). 0: stopped at once.
RECONNECT_GRACE = 60.0

#: A program's output is read this long after it exited, while other processes
#: (daemons it started) still hold its pipes open.
LINGER = 1.0

#: How often the sessions reap orphans and look for processes not yet recorded.
WATCH_INTERVAL = 2.0

#: The reaper (expiry of unused reservations) runs every tenth of the
#: reservation timeout, but at most this often and at least this rarely.
REAP_INTERVAL_MIN, REAP_INTERVAL_MAX = 0.5, 5.0

#: The event log of an ended reservation (L{events}) is kept this long, so that a
#: page can still read how its session ended; then its token is unknown.
EVENTS_KEPT_AFTER_END = 60.0
