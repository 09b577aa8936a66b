"""Progress of long work, on stderr: a live bar on a terminal; elsewhere (a log file, a batch job's
output) one plain line at intervals, so a job that runs for hours still says how far it got."""

import sys

from tqdm import tqdm

# Off a terminal: the first line after this many seconds (short jobs print nothing), then at most one per interval.
LOG_INTERVAL_SECONDS = 60.0


class _LogLines:
    """A stream for tqdm that writes each redrawn status as a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **options) -> tqdm:
    """A tqdm progress bar on stderr (see the module docstring); `options` as tqdm takes them."""
    stream = sys.stderr
    if stream is None:
        return tqdm(iterable, disable=True, **options)
    if stream.isatty():
        return tqdm(iterable, file=stream, **options)
    return tqdm(
        iterable, file=_LogLines(stream), ascii=True, delay=LOG_INTERVAL_SECONDS, mininterval=LOG_INTERVAL_SECONDS,
        **options,
    )


def token_progress(description: str) -> tqdm:
    """A bar counting tokens read (unknown total): the unit of work of scoring and embedding, which
    moves on a single long genome as it does on many short sequences."""
    return progress(desc=description, unit="tok", unit_scale=True)
