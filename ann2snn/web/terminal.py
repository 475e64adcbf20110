"""What a job's output looks like on a terminal: a tiny screen model fed with the bytes the CLI wrote.

Jobs run the CLI with rich's terminal features forced on (``FORCE_COLOR``, colours off with ``NO_COLOR``), so the
page shows the very progress bars a person sees in a terminal: rich redraws them in place with carriage returns,
cursor-up and erase-line sequences. :class:`Screen` applies those to a list of lines and remembers which rows
changed when, so a page that has seen version ``v`` gets only the rows rewritten since (:meth:`Screen.since`).
"""

from __future__ import annotations

import codecs
import re
import threading

__all__ = ["Screen", "render"]

# CSI (ESC [ params final), OSC (ESC ] ... BEL or ESC \), and any other two-byte escape
_ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_INCOMPLETE_CSI = re.compile(r"\x1b(\[[0-9;?]*)?$")
_OSC_END = re.compile(r"\x07|\x1b\\")
_CONTROL = re.compile(r"[\r\n\b\t\x1b]")


class Screen:
    """Lines of a terminal without a height limit; thread-safe (one writer, any number of readers)."""

    def __init__(self) -> None:
        self._lines: list[str] = [""]
        self._changed: list[int] = [0]
        self._row = 0
        self._col = 0
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()
        self.version = 0

    def feed(self, data: bytes) -> None:
        """Apply the next bytes of output (escape sequences may be split across calls)."""
        text, self._pending = _split_incomplete(self._pending + self._decoder.decode(data))
        with self._lock:
            self.version += 1
            pos = 0
            for m in _ESCAPE.finditer(text):
                self._text(text[pos:m.start()])
                if m.group(2):
                    self._csi(m.group(1), m.group(2))
                pos = m.end()
            self._text(text[pos:])

    def since(self, version: int) -> tuple[int, int, list[str]]:
        """``(version now, first changed row, rows from there on)`` for a reader that has seen ``version``."""
        with self._lock:
            first = next((i for i, v in enumerate(self._changed) if v > version), len(self._lines))
            return self.version, first, list(self._lines[first:])

    def lines(self) -> list[str]:
        """The screen, trailing blank lines dropped."""
        with self._lock:
            out = list(self._lines)
        while out and not out[-1].strip():
            out.pop()
        return out

    def last_line(self) -> str:
        """The last non-blank line (a live progress bar while one is drawn)."""
        lines = self.lines()
        return lines[-1].strip() if lines else ""

    # -- terminal operations (called under the lock) ------------------------------------------------------
    def _text(self, text: str) -> None:
        pos = 0
        for m in _CONTROL.finditer(text):
            self._put(text[pos:m.start()])
            c = m.group()
            if c == "\n":
                self._move(self._row + 1)
            elif c == "\r":
                self._col = 0
            elif c == "\b":
                self._col = max(0, self._col - 1)
            elif c == "\t":
                self._put(" " * (8 - self._col % 8))
            pos = m.end()
        self._put(text[pos:])

    def _put(self, s: str) -> None:
        if not s:
            return
        line = self._lines[self._row].ljust(self._col)
        self._lines[self._row] = line[:self._col] + s + line[self._col + len(s):]
        self._col += len(s)
        self._changed[self._row] = self.version

    def _move(self, row: int, col: int = 0) -> None:
        while len(self._lines) <= row:
            self._lines.append("")
            self._changed.append(self.version)
        self._row, self._col = max(0, row), col

    def _csi(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else None
        if final == "A":
            self._move(max(0, self._row - (n or 1)), self._col)
        elif final == "B":
            self._move(self._row + (n or 1), self._col)
        elif final == "G":
            self._col = max(0, (n or 1) - 1)
        elif final == "K":
            line, col = self._lines[self._row], self._col
            self._lines[self._row] = {None: line[:col], 0: line[:col], 1: " " * col + line[col:], 2: ""}.get(n, line)
            self._changed[self._row] = self.version
        # colours (m), cursor visibility (?25l / ?25h) and everything else change no text


def _split_incomplete(text: str) -> tuple[str, str]:
    """``(text to apply now, an escape sequence cut off at the end to keep for the next bytes)``."""
    osc = text.rfind("\x1b]")
    if osc >= 0 and not _OSC_END.search(text, osc + 2) and len(text) - osc < 4096:
        return text[:osc], text[osc:]
    cut = _INCOMPLETE_CSI.search(text)
    return (text[:cut.start()], text[cut.start():]) if cut else (text, "")


def render(data: bytes) -> list[str]:
    """The lines a terminal shows after ``data`` (a finished job's log file)."""
    screen = Screen()
    screen.feed(data)
    return screen.lines()
