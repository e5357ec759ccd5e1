"""Waiting for files to appear in directories, and for a request to stop.

A following stage sleeps until a file it wants appears: on Linux through
inotify (the ``inotify_simple`` package, a thin ctypes binding), elsewhere,
or when inotify cannot be had (no watches left), by looking again every
``poll_seconds``.  Either way the caller also rescans from time to time
(the ``timeout`` of :meth:`DirectoryWatcher.wait`), so a lost event costs a
delay, never a file.

:class:`Stop` is what a signal handler sets: it wakes a waiting watcher at
once, through a pipe, instead of letting it sleep out its timeout.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

try:  # Linux only; elsewhere the watcher polls
    import inotify_simple
except ImportError:  # pragma: no cover - not Linux
    inotify_simple = None


class Stop:
    """A stop request (SIGTERM, SIGINT) or a drain request, that can wake a ``select``.

    ``stop``: finish the unit in hand and return.  ``drain``: take in what is
    there now, finish all of it, then return.  Both are safe to call from a
    signal handler (they set a flag and write a byte to a pipe).
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        self._stop.set()
        self._wake()

    def drain(self) -> None:
        self._drain.set()
        self._wake()

    def is_set(self) -> bool:
        return self._stop.is_set()

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    def fileno(self) -> int:
        return self._r

    def _wake(self) -> None:
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: it is readable already

    def clear_wakeups(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    @classmethod
    def on_signals(cls, drain: bool = False) -> "Stop":
        """A following stage's stop: SIGTERM and SIGINT stop it, SIGUSR1 drains (main thread only).

        ``drain`` asks for a drain from the start (``--drain``).
        """
        stop = cls()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        signal.signal(signal.SIGUSR1, lambda *_: stop.drain())
        if drain:
            stop.drain()
        return stop

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class Changes:
    """What a wait saw: files that appeared, and directories to look through whole.

    ``rescan`` holds new directories (whose files may predate their watch),
    or every watched root after an event overflow and in poll mode.
    """

    files: list[Path] = field(default_factory=list)
    rescan: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.files or self.rescan)


class DirectoryWatcher:
    """Watches ``roots`` (and, if ``recursive``, every directory below them) for new files.

    A file counts as having appeared when it is renamed or hard-linked into a
    watched directory, or closed after writing.  With ``created=False`` a
    plain create does not count (a file copied in is seen when its writer
    closes it); with ``created=True`` it does (a layout file is published by
    a hard link, complete from its first moment).  Directories whose names
    start with a dot (work and state directories) are not watched.
    """

    def __init__(self, roots: Iterable[str | os.PathLike], recursive: bool = False,
                 created: bool = False, poll_seconds: float = 1.0, use_inotify: bool = True):
        self.roots = [Path(r) for r in roots]
        self.recursive = recursive
        self.created = created
        self.poll_seconds = poll_seconds
        self._wds: dict[int, Path] = {}
        self._inotify = None
        if use_inotify and inotify_simple is not None:
            try:
                self._inotify = inotify_simple.INotify()
                for root in self.roots:
                    self._watch_tree(root) if recursive else self._watch(root)
            except OSError as e:
                log.warning("inotify unavailable (%s); looking for new files every %.1fs",
                            e, poll_seconds)
                self._close_inotify()

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    def _mask(self) -> int:
        f = inotify_simple.flags
        mask = f.MOVED_TO | f.CLOSE_WRITE | f.CREATE | f.Q_OVERFLOW | f.DELETE_SELF
        return mask | f.ONLYDIR

    def _watch(self, directory: Path) -> None:
        wd = self._inotify.add_watch(directory, self._mask())
        self._wds[wd] = directory

    def _watch_tree(self, root: Path) -> None:
        """Watch ``root`` and every directory below it (not dot directories)."""
        self._watch(root)
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for d in dirnames:
                try:
                    self._watch(Path(dirpath) / d)
                except FileNotFoundError:
                    pass

    def wait(self, timeout: float, stop: Stop | None = None) -> Changes:
        """Block until files appear, ``stop`` is set, or ``timeout`` seconds pass."""
        fds = [stop.fileno()] if stop is not None else []
        if self._inotify is None:
            ready, _, _ = select.select(fds, [], [], min(timeout, self.poll_seconds))
            if stop is not None and ready:
                stop.clear_wakeups()
            return Changes(rescan=list(self.roots))
        ready, _, _ = select.select(fds + [self._inotify.fileno()], [], [], timeout)
        if stop is not None and stop.fileno() in ready:
            stop.clear_wakeups()
        if self._inotify.fileno() not in ready:
            return Changes()
        return self._read_events()

    def _read_events(self) -> Changes:
        f = inotify_simple.flags
        changes = Changes()
        for event in self._inotify.read(timeout=0):
            if event.mask & f.Q_OVERFLOW:
                log.warning("inotify queue overflowed; rescanning")
                changes.rescan = list(self.roots)
                continue
            directory = self._wds.get(event.wd)
            if directory is None or not event.name:
                continue
            path = directory / event.name
            if event.mask & f.ISDIR:
                if self.recursive and not event.name.startswith(".") and event.mask & (
                        f.CREATE | f.MOVED_TO):
                    try:
                        self._watch_tree(path)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    except OSError as e:  # out of watches (fs.inotify.max_user_watches)
                        log.warning("cannot watch %s (%s); looking for new files every %.1fs "
                                    "from now on", path, e, self.poll_seconds)
                        self._close_inotify()
                        return Changes(rescan=list(self.roots))
                    changes.rescan.append(path)
                continue
            if event.mask & (f.MOVED_TO | f.CLOSE_WRITE) or (self.created and event.mask & f.CREATE):
                changes.files.append(path)
        return changes

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            try:
                self._inotify.close()
            except OSError:
                pass
        self._inotify = None
        self._wds.clear()

    def close(self) -> None:
        self._close_inotify()

    def __enter__(self) -> "DirectoryWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
