"""Exclusive use of a folder: `RunLock` writes run.lock (pid, host, start) and refuses a
second process at once; `RunFolderError` is every refusal of a run folder.

`ice_tf.experiment.run_folder` re-exports both, where they are documented with the folder contract.

Example:
  with RunLock("runs/ice"):
      ...  # write the folder
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings

LOCK_FILE = "run.lock"


class RunFolderError(RuntimeError):
    """A run folder refuses the run; the message says why and how to proceed.

    Example:
      try:
          check_folder("runs/x", config.to_dict(), overwrite=False)
      except RunFolderError as error:
          print(error)  # runs/x holds a finished run; pass --overwrite ...
    """


def _process_start(pid):
    """The start time of process `pid` in clock ticks since boot (Linux), else None: with
    the pid it tells a lock's holder from a later process that reuses its pid."""
    try:
        with open(f"/proc/{int(pid)}/stat") as stream:
            return int(stream.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid, started_ticks=None):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    if started_ticks is not None:
        now = _process_start(pid)
        return now is None or now == started_ticks  # another start: the pid was reused
    return True


class RunLock:
    """Exclusive use of a run folder: run.lock holds the pid, host and start time.

    A second process is refused at once, with the holder named. A lock left by a
    process that is no longer running on this host is taken over with a warning; on
    another host the lock cannot be checked: remove run.lock once that run is gone.

    Example:
      with RunLock("runs/ice"):
          ...  # write the folder
    """

    STALE_EMPTY_SECONDS = 30  # a lock file still empty after this was left by a kill

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self._held = False

    def _holder(self):
        try:
            with open(self.path) as stream:
                text = stream.read()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _is_stale(self, holder):
        if not holder:
            with contextlib.suppress(OSError):
                return time.time() - os.path.getmtime(self.path) > self.STALE_EMPTY_SECONDS
            return True
        return holder.get("host") == socket.gethostname() and not _process_alive(
            int(holder.get("pid", -1)), holder.get("start_ticks"))

    def is_held(self):
        """Whether run.lock names a live process (or one on another host, unverifiable);
        a lock left by a dead process on this host is not held."""
        return os.path.exists(self.path) and not self._is_stale(self._holder())

    def acquire(self):
        """Takes the lock (writing run.lock), or raises RunFolderError if a live process
        holds it or the folder cannot be written."""
        try:
            os.makedirs(self.folder, exist_ok=True)
            return self._acquire()
        except OSError as error:
            raise RunFolderError(
                f"cannot write output_dir {self.folder} ({error.strerror or error}); choose a "
                "writable output_dir.") from None

    def _acquire(self):
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "start_ticks": _process_start(os.getpid())}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._is_stale(holder):
                    who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
                           f"{holder.get('started')}") if holder else "another process"
                    raise RunFolderError(
                        f"{self.folder} is in use by {who}; wait for that run to end or stop it "
                        f"(a lock of a stopped run on another host: remove {self.path})."
                    ) from None
                warnings.warn(f"{self.folder}: taking over the lock of a run that is no longer "
                              f"running (pid {holder.get('pid', '?')}).", stacklevel=2)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(handle, "w") as stream:
                stream.write(json.dumps(record) + "\n")
            self._held = True
            return self
        raise RunFolderError(f"{self.folder}: could not take {self.path}; another run took it.")

    def release(self):
        """Gives the lock back (removes run.lock) if this process holds it."""
        if self._held:
            self._held = False
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


__all__ = ["RunLock", "RunFolderError", "LOCK_FILE"]
