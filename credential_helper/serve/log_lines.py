"""The server's log lines reach stderr from one thread.

The serving loop (loop.py) hands each line over and goes on: it never waits
for the terminal or the pipe behind stderr, and under load many lines leave in
one write. Order is kept; at most LIMIT lines wait, after which the loop waits
as it would if it wrote itself (a stalled stderr slows the server rather than
filling its memory). At exit every line handed over is written first, however
long stderr takes; ``flush(timeout)`` waits for them too. A stderr that is
non-blocking and full is waited for, not dropped; only a closed one loses what
is left.

The writer is woken once per batch, not per line: after the first line it
waits BATCH seconds for more, so a busy server makes about 1/BATCH writes a
second (issue 21: a write per line was a system call and a thread hand-off per
request)."""

from __future__ import annotations

import atexit
import collections
import os
import sys
import threading
import time
from typing import TextIO

LIMIT = 10_000
BATCH = 0.01  # seconds a line may wait for others to leave with it


class LineWriter:
    def __init__(self, stream: TextIO | None = None, limit: int = LIMIT) -> None:
        self._stream = stream  # None: sys.stderr as it is when each batch is written
        self._limit = limit
        self._lines: collections.deque[str] = collections.deque()
        self._writing = False
        self._idle = False  # the writer waits for a first line (only then is it woken)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def __call__(self, line: str) -> None:
        with self._cond:
            while len(self._lines) >= self._limit:
                self._cond.wait()
            self._lines.append(line)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-lines", daemon=True)
                self._thread.start()
                atexit.register(self.flush, None)
            elif self._idle:
                self._idle = False
                self._cond.notify_all()

    def flush(self, timeout: float | None = 5.0) -> None:
        """Return once every line handed over so far is written (or ``timeout`` passed; None: no limit)."""
        with self._cond:
            if self._idle and self._lines:
                self._cond.notify_all()
            self._cond.wait_for(lambda: not self._lines and not self._writing, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
            time.sleep(BATCH)  # the lines that follow leave with this one
            with self._cond:
                batch = "".join(f"{line}\n" for line in self._lines)
                self._lines.clear()
                self._writing = True
                self._cond.notify_all()  # room again for a waiting caller (the loop)
            self._write(self._stream or sys.stderr, batch)
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    @staticmethod
    def _write(stream: TextIO, batch: str) -> None:
        try:
            fd = stream.fileno()
            stream.flush()  # anything written there before, first
            if stream.isatty():
                fd = -1  # a terminal (a Windows console decodes bytes its own way): through the stream
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO), or closed
            fd = -1
        if fd < 0:
            try:
                stream.write(batch)
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or gone: there is nowhere left to say so
            return
        # The bytes to the descriptor ourselves: a TextIOWrapper over a non-blocking stderr that
        # is full cannot say which characters it kept, os.write says which bytes it wrote.
        data = memoryview(batch.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace"))
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                time.sleep(0.01)  # its reader has not taken the last write yet
            except OSError:
                return
