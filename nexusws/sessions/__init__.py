"""Everything about a session's life, from reservation to the last process ended.

  registry     reservations, tokens, the state machine
  reservation  one reservation: its record, states and allowed transitions
  attach       sessions that outlive their WebSocket: detach, grace, re-attach, take over
  deadlines    idle and time limits, their warnings, touch and extend
  adoption     sessions kept running at shutdown (--keep_sessions) and adopted at start
  upkeep       the reaper, and what a previous run left (restore)
  events       each reservation's event log (for /v1/events, /v1/session); progress reports
  starting     one instance's start: backend start, port wait, start timeout -> StartFailure
  statefile    the crash-safe record of the registry: the file (check, read, write, set aside)
  journal      the state file's format: full record and change lines, compaction, replay
  records      what a saved record may hold (the checks), saved_records, recover
  config       the service config file (--remote_session_config)
  script       the script API, RemoteServiceScript (public path: nexusws.services)
  instances    running instances and the processes each one owns (the local backend, Service)
  owners       who owns which process: an instance's record, the Tracker, the System facts
  builtin      the built-in ensight/envision services
  backend      the seam for where a session runs (ISessionBackend) and StartFailure
  launcher     starting programs and watching them; ending a child's process group
  wrapping     the command that puts a program in its own session (setsid, supervisor)
  stopping     stopping process trees: the one TERM, grace, KILL loop; kill_processes
  ports        waiting until a session's TCP port accepts (wait_for_port, StartTimeout)
  timeouts     every grace period, timeout and poll interval of the sessions
  procs        process facts from /proc, the subreaper, orphan reaping
  supervisor   the per-program supervisor (run as a script, imports nothing of ours)
  keeper       SessionsService: the registry, state file and launchers tied to the gateway
  slurmqueue   what Slurm says of the gateway's jobs: one squeue per poll for all of them
  slurmscript  the script API of a Slurm service, SlurmScript (public path: nexusws.services)
  slurm        the Slurm backend (SlurmService): a session is a batch job; kept and adopted jobs
  slurminstance  one instance's job: sbatch, the queue's progress, the report, scancel (Job)
  slurmsite    what the Slurm services share: job name, queue, the reports' poll, sbatch/scancel
  slurmreport  a job's report (the connection file) checked, and its directory
  slurmjob     the program inside a session's job (sent to sbatch; imports nothing of ours)

May import: the standard library, Twisted, zope.interface, and nexusws's
foundation modules (errors, convert, logs, scrub, clock, pipes for the port probe). Nothing
here imports the HTTP, WebSocket or assembly modules (web, api, bridge,
routing, tap, assemble, gateway); they import this package.
"""
