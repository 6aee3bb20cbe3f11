"""One way to fail. `ForecasterError` is the base of every expected failure (bad input, a missing file, a
refused request, a model that is not here): every domain error (DatasetError, RunError, InferenceError, ...)
subclasses it. Helpers raise; they never print or call sys.exit. Every script's `main` is wrapped by `cli`,
which turns a ForecasterError into one `Error: ...` line on stderr and exit status 1. Anything else is a bug
and keeps its traceback: no script has a broad `except`.

>>> @cli
... def main(argv=None):
...     raise UsageError(["--a: must be > 0", "--b: no such file"])
>>> import contextlib, io
>>> err = io.StringIO()
>>> with contextlib.redirect_stderr(err):
...     status = main([])
>>> status, err.getvalue()
(1, 'Error: --a: must be > 0; --b: no such file\\n')
"""
import functools
import sys


class ForecasterError(Exception):
    """An expected failure, reported to the user as one `Error: <message>` line (exit 1)."""


class UsageError(ForecasterError, ValueError):
    """Bad command-line arguments: every problem found, reported at once, joined by '; '."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def check_args(problems):
    """Raise UsageError when validate_args found problems; do nothing when it found none."""
    if problems:
        raise UsageError(problems)


def cli(main):
    """The wrapper of every script's `main(argv=None)`: its return value (an exit status) passes through; a
    ForecasterError becomes one `Error:` line and 1. Other exceptions propagate with their traceback."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except ForecasterError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    wrapper.cli = True                          # tests/test_layering.py checks every script's main has it
    return wrapper
