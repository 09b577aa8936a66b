"""The one error of conversion, shared by the checkpoint readers and the converters."""


class ConversionError(ValueError):
    """A source that cannot be converted; the message names the file and what is wrong."""
