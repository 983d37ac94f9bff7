"""Errors the user can act on. The CLI prints them as one line without a traceback."""


class ScarNetError(Exception):
    """Base class: the message says what is wrong and what to do."""


class InputError(ScarNetError):
    """The input image cannot be segmented as given."""


class OutputError(ScarNetError):
    """An output could not be written (full disk, read-only folder); nothing of that study is kept."""


class CheckpointError(ScarNetError):
    """A model file is missing, corrupt, not a ScarNet checkpoint or does not match the network."""


class Cancelled(ScarNetError):
    """The run was cancelled by the caller; nothing was written."""
