"""A Slurm service for the tests (issue 16): its job runs the programs its options give.

  programs       the job's programs (SlurmScript.job's), placeholders and all
  ready_timeout  passed on when given
"""

from nexusws.services import SlurmScript


class SlurmProgram(SlurmScript):
    def job(self, index, options):
        spec = {"programs": self._common_options["programs"]}
        if "ready_timeout" in self._common_options:
            spec["ready_timeout"] = self._common_options["ready_timeout"]
        if options.get("size") == "bad":
            raise ValueError("size 'bad' is not offered")
        return spec
