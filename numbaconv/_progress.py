"""A small progress bar for the command line (bench, demo): no dependencies.

On a terminal the bar redraws in place below the lines already printed; elsewhere (logs, CI,
notebooks) each line is printed with a ``[k/n]`` counter and nothing is redrawn.
"""

import sys
import time


class Progress:
    """Counts ``total`` steps; :meth:`log` prints a line and, by default, counts one step.

    Parameters
    ----------
    total : int
        Expected steps (the bar never passes it).
    label : str
        Shown before the bar.
    stream : file, default sys.stdout
    """

    def __init__(self, total, label="", stream=None, width=30):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = False

    def _bar(self):
        filled = int(self.width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {elapsed:5.0f} s")

    def log(self, line="", advance=True):
        """Print ``line`` (above the bar on a terminal) and count a step unless ``advance`` is
        False."""
        if advance:
            self.done = min(self.done + 1, self.total)
        if self.tty:
            self.stream.write("\r\x1b[K" + (line + "\n" if line else "") + self._bar())
            self._drawn = True
        elif line:
            counter = f"[{self.done}/{self.total}] " if advance else ""
            self.stream.write(counter + line + "\n")
        self.stream.flush()

    def note(self, line):
        """Print ``line`` without counting a step."""
        self.log(line, advance=False)

    def close(self):
        """End the bar's line on a terminal."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
