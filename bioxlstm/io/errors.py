"""The errors a user's input raises: each a ValueError whose message is one line naming the file,
and where it applies the record id and position."""


class InputError(ValueError):
    """A problem with an input file, described in one line that names the file."""


class InvalidSequenceError(InputError):
    """A record holds a character outside its domain's alphabet."""


class EmptyRecordError(InputError):
    """A record has no sequence."""


class MissingLabelError(InputError):
    """A record has no label, or an empty / NaN one."""
