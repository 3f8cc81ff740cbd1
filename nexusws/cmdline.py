"""Command lines that parse as the reference's argparse did, on Twisted's usage.Options.

Names keep the reference's underscores and also take hyphens (C{--http-port});
a unique prefix abbreviates a name (C{--http_dir}); options may follow the
positional arguments; under twistd a mistake is one line and exit status 2.
Used by L{nexusws.tap.Options}.
"""

import os
import sys

from twisted.python import usage

from nexusws.errors import TWISTD_PROG, say


class ReferenceStyleOptions(usage.Options):
    """L{usage.Options} with the reference's spelling rules (see the module docstring).

    @ivar given: names (underscore spelling) of the options given on the command line.
    """

    def __init__(self):
        super().__init__()
        self.given = set()

    def getSynopsis(self):
        if self.parent is None:
            return f"Usage: {os.path.basename(sys.argv[0])} {self.synopsis}"
        return super().getSynopsis()

    def take_words(self, key, value, rest):
        """Take option C{key}'s C{value} (and maybe more words from the iterator C{rest})
        here rather than through getopt; True if taken. None is, by default."""
        return False

    # --- parsing --------------------------------------------------------------

    def parseOptions(self, options=None):
        """Parse C{options} (default: C{sys.argv[1:]}).

        Under twistd a L{usage.UsageError} is printed as one line and exits
        with 2: twistd itself would print its whole usage text and exit 0.
        """
        if options is None:
            options = sys.argv[1:]
        try:
            super().parseOptions(self._normalize(list(options)))
        except usage.UsageError as e:
            if self.parent is None:
                raise
            say(TWISTD_PROG, e)
            raise SystemExit(2) from None

    def _normalize(self, args):
        """Rewrite C{args} into what Twisted's getopt-based parser accepts.

        Long options become C{--name=value} in their declared spelling and go
        before the positional arguments; an option L{take_words} takes (one of
        several words) is handed to it here.
        """
        declared = {}  # underscore spelling -> (declared spelling, takes a value)
        for name in self.longOpt:
            bare = name.rstrip("=")
            declared[bare.replace("-", "_")] = (bare, name.endswith("="))
        front, positional = [], []
        rest = iter(args)
        for arg in rest:
            if arg == "--":
                positional.extend(rest)
                break
            if not arg.startswith("--"):
                # Short flags (-h) go to getopt; a lone "-" is positional.
                (front if arg.startswith("-") and arg != "-" else positional).append(arg)
                continue
            name, eq, value = arg[2:].partition("=")
            key = self._resolve(name.replace("-", "_"), declared)
            spelling, takes_value = declared[key]
            self.given.add(key)
            if not takes_value:
                if eq:
                    raise usage.UsageError(f"--{key} takes no value")
                front.append(f"--{spelling}")
                continue
            if not eq:
                value = next(rest, None)
                if value is None:
                    raise usage.UsageError(f"--{key} needs a value")
            if self.take_words(key, value, rest):
                continue
            front.append(f"--{spelling}={value}")
        # "--" so that getopt takes a positional such as "-1" as an argument.
        return front + ["--"] + positional

    @staticmethod
    def _resolve(key, declared):
        """The declared option C{key} names, exactly or as a unique prefix."""
        if key in declared:
            return key
        matches = sorted(name for name in declared if name.startswith(key))
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise usage.UsageError(f"--{key} is ambiguous: " + ", ".join(f"--{m}" for m in matches))
        raise usage.UsageError(f"no such option --{key}")
