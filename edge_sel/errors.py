"""Errors a user can fix. The CLI prints them as one line and exits 2, without a traceback."""


class InputError(Exception):
    """Bad usage or bad input: a missing file, a wrong option value, a mismatched checkpoint.

    The message names the file or option at fault and what is wrong with it.
    """
