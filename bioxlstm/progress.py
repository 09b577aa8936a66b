"""Progress of long work, on stderr: a live bar on a terminal; elsewhere (a log file, a batch job's
output) plain lines: a first one naming the job (and its size, when known), one at intervals, so a job
that runs for hours still says how far it got, and a last one with the count and the rate, however
short the job."""

import sys

from tqdm import tqdm

# Off a terminal: at most one line per interval between the first line and the last.
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


class _LoggedProgress(tqdm):
    """tqdm off a terminal. Without `delay`, tqdm draws as it starts and again as it closes (with the
    rate over the whole run), so even a job shorter than one interval leaves both lines in the log. The
    first line waits for the second: a mistake in the input, found as the job begins, or Ctrl-C then
    stays the one line the job prints."""

    def __init__(self, *args, **options):
        self._lines_drawn, self._first_line = 0, ""  # before tqdm's __init__, which draws the first line
        super().__init__(*args, **options)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":
            return True  # tqdm clears its line on a terminal; a log has nothing to clear
        line = self.__str__() if msg is None else msg
        self._lines_drawn += 1
        if self._lines_drawn == 1:
            self._first_line = line
            return True
        if self._lines_drawn == 2:
            self.fp.write(self._first_line)
        self.fp.write(line)
        return True

    def close(self) -> None:
        if sys.exc_info()[1] is not None:
            # The job failed or was interrupted (or left a loop over the bar early, which tqdm sees as
            # GeneratorExit): its error, not a count that reads like a finished job, is the last line.
            self.leave = False
        super().close()


def progress(iterable=None, **options) -> tqdm:
    """A tqdm progress bar on stderr (see the module docstring); `options` as tqdm takes them."""
    stream = sys.stderr
    if stream is None:
        return tqdm(iterable, disable=True, **options)
    if stream.isatty():
        return tqdm(iterable, file=stream, **options)
    return _LoggedProgress(iterable, file=_LogLines(stream), ascii=True, mininterval=LOG_INTERVAL_SECONDS, **options)


def token_progress(description: str) -> tqdm:
    """A bar counting tokens read (unknown total): the unit of work of scoring and embedding, which
    moves on a single long genome as it does on many short sequences."""
    return progress(desc=description, unit="tok", unit_scale=True)
