"""Figure 11's Slurm service: each session is a job running slurm_trivial.py on the job's port.

Options: C{record} (the record file the program appends to), C{job_python} (the program's
interpreter on the node, default /usr/bin/python3). The reservation's C{sample} goes to the
program, which writes it with its times, so the bench finds the line of each launch.
"""

import os

from nexusws.services import SlurmScript

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_trivial.py")


class BenchSlurm(SlurmScript):
    def job(self, index, options):
        python = self._common_options.get("job_python", "/usr/bin/python3")
        record = self._common_options["record"]
        return {"programs": [[python, "-S", PROGRAM, "{port}", record, options.get("sample", "-")]],
                "ready_timeout": 30}
