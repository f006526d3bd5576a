"""One error style for every `minorpo` command.

A mistake the user can fix (a flag, a file, a row) raises `UserError` with a message that names the flag, file
or row. `minorpo.tools.cli.main` prints it as one line, `minorpo: error: <message>`, and exits with status 2, the
same as argparse does for a malformed command line. Set `MINORPO_DEBUG=1` (or pass `--debug` before the
command) to see the traceback instead. Anything else that goes wrong is a bug in minorpo and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake in the command line, a file or a data row: reported in one line, exit status 2.

    A subclass of ValueError so that library callers who catch ValueError keep working.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named on the command line that does not exist (also a FileNotFoundError)."""
