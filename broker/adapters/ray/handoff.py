"""The runner's side of an image pod: hand one job to the pod's `job` container, never run it.

On Kubernetes (Pod Security `restricted`) the runner cannot start podman. A pod of an approved
image has two containers: `ray-worker` (Ray and this runner, with the Ray token) and `job` (the
tenant's image, unmodified, as another user, with none of our environment), sharing an emptyDir
at `BROKER_HANDOFF_DIR` and nothing else but the pod network. The job container's entry point,
`k8s/base/launch.sh`, waits for the runner's run script, runs it once and reports back; this
module is the other end:

- `claim`: one attempt per pod in its life. A private claim file in the runner's own
  filesystem (O_EXCL; the tenant cannot reach it, so cannot undo it) and a `ctl/` directory in
  the shared one that only the runner may write (mkdir: taken once);
- `submit`: `ctl/run.sh`, the job's argv and environment with every word single-quoted, ending
  in `exec env -- NAME=value... argv...`: the job's environment is its container's own (the
  image's ENV, less Kubernetes' KUBERNETES_*) with what the runner
  gave, never the runner's own (no RAY_*, no token), renamed into place;
- `PodProcess`: a Popen-like view of the job (`wait`, `poll`, `stop`) that follows the files
  the launcher writes (`started`, `exit`, `out.log`) and copies `out.log` into the runner's
  capped log (`LogPump`);
- stopping: the runner cannot signal across containers, so `ctl/stop` (the launcher sends
  SIGTERM to the job's process group) then, after the grace period, `ctl/kill` (SIGKILL).

Every file read from the shared directory is the tenant's: it is opened relative to a
directory descriptor with O_NOFOLLOW (a symlink `out.log` -> /proc/self/environ would
otherwise copy the runner's environment, the token included, into the job's log), must be a
regular file by fstat, is read within a size bound and parsed strictly. What the runner writes
goes through a descriptor of its own `ctl/` directory, so a tenant who renames or replaces
`ctl` cannot redirect a write.

Standard library and `broker.jobenv` only: shipped to Ray nodes by value, like the runner.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence


HANDOFF_ENV = "BROKER_HANDOFF_DIR"  # set in the ray-worker container of an image pod only
CTL = "ctl"  # the runner's directory inside the handoff directory (the job may read it)
RUN_SCRIPT, NOTICE, CLAIM, STOP, KILL = "run.sh", "notice.json", "claim", "stop", "kill"
STARTED, EXIT, LOG, LOST = "started", "exit", "out.log", "lost"  # the launcher's
SMALL_MAX = 64  # bytes: `started` and `exit` hold one number
EXIT_INVALID = 255  # the launcher's exit record was not a number (the tenant's image wrote it)
POLL_S = 0.1
KILL_WAIT_S = 15.0  # after `kill`: how long the launcher has to confirm the end
_CHUNK = 64 * 1024
_COPY_MAX = 8 << 20  # bytes copied per look at out.log, so the end and a stop are still noticed
_EXIT_RE = re.compile(rb"\A([0-9]{1,3})\n?\Z")


class HandoffRefused(RuntimeError):
    """This pod cannot take the job (it already ran an attempt, or its handoff directory is
    not as the runner left it)."""


def quote(word: str) -> str:
    """One shell word, taken literally by any POSIX sh: inside single quotes nothing is special
    but the quote itself, written as '\\'' (close, escaped quote, reopen)."""
    return "'" + word.replace("'", "'\\''") + "'"


def run_script(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The launcher's `run.sh`: `exec env -- NAME=value... argv...`, every word quoted.

    The job's environment is the job container's own (its image's ENV, as podman gives a
    container; the launcher drops what Kubernetes adds, KUBERNETES_*) with `env` over it: a
    CUDA image keeps its LD_LIBRARY_PATH and NVIDIA_* settings. Nothing of the runner's reaches
    it: the runner lives in the pod's other container. `--` ends env's options (a name may start
    with '-'). Raises ValueError for what the script cannot say: an empty command, NUL anywhere,
    a name that is empty or holds '=', and a command whose first word holds '=' (env would take
    it for a variable)."""
    if not argv or not argv[0]:
        raise ValueError("the job has no command")
    if "=" in argv[0]:
        raise ValueError("the command's first word contains '=': it cannot be run through env(1)")
    words = ["exec", "env", "--"]
    for name, value in env.items():
        if not name or "=" in name or "\x00" in name or "\x00" in value:
            raise ValueError(f"env name {name[:64]!r} or its value cannot be passed to the job")
        words.append(quote(f"{name}={value}"))
    for arg in argv:
        if "\x00" in arg:
            raise ValueError("the command contains a NUL byte")
        words.append(quote(arg))
    return "# written by the broker's runner: the job's environment and command, quoted\n" + \
        " \\\n  ".join(words) + "\n"


def pod_env(env: Mapping[str, str]) -> dict[str, str]:
    """The job's variables in a pod, over the job container's own environment (its image's
    PATH too: a job that sets none keeps the image's, as in a podman container)."""
    return dict(env)


def read_small(dir_fd: int, name: str, limit: int = SMALL_MAX) -> bytes | None:
    """A small file the tenant may have written: None while it does not exist; ValueError
    when it is a symlink, not a regular file or over `limit` bytes."""
    fd = _open_tenant(dir_fd, name)
    if fd is None:
        return None
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{name} holds more than {limit} bytes")
    return data


def parse_exit(data: bytes) -> int:
    """`exit` holds one status, 0-255, and an optional newline; anything else is ValueError."""
    m = _EXIT_RE.match(data)
    if not m or int(m.group(1)) > 255:
        raise ValueError(f"exit record {data[:16]!r} is not a status")
    return int(m.group(1))


def _open_tenant(dir_fd: int, name: str) -> int | None:
    """Open `name` in the shared directory for reading, refusing anything but a regular file
    (a FIFO must not block us: O_NONBLOCK). None when it does not exist."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{name} is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{name} is not a regular file")
    return fd


class Handoff:
    """One pod's handoff directory, as the runner uses it (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._dir = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._ctl: int | None = None
        self._gid = os.fstat(self._dir).st_gid  # the pod's fsGroup: the job reads what we write

    def claim(self, private: Path, identity: str) -> None:
        """Take this pod for one attempt, once in its life. `private`: a path in the runner's
        own filesystem (never the shared directory). Raises HandoffRefused."""
        try:
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise HandoffRefused("this pod already ran an attempt (an image pod runs one attempt in "
                                 f"its life; claim: {private})") from None
        with os.fdopen(fd, "w") as f:
            f.write(identity + "\n")
        try:
            os.mkdir(CTL, 0o750, dir_fd=self._dir)
        except FileExistsError:
            raise HandoffRefused(f"{self.path / CTL} exists: the handoff directory was already used "
                                 "or tampered with; not handing a job over") from None
        fd = os.open(CTL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():  # a directory swapped in between mkdir and open
            os.close(fd)
            raise HandoffRefused(f"{self.path / CTL} is not the runner's")
        # the job's group (the pod's fsGroup, the directory's group) reads it; only the runner
        # writes it. The group is set here too, should the directory not pass it on (setgid)
        os.fchown(fd, -1, self._gid)
        os.fchmod(fd, 0o750 | (os.fstat(fd).st_mode & stat.S_ISGID))
        self._ctl = fd
        self._write(CLAIM, identity + "\n")

    def submit(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Hand the job over: the launcher starts it once `run.sh` appears."""
        self._write(RUN_SCRIPT, run_script(argv, env))

    def write_notice(self, notice: Mapping[str, Any]) -> None:
        self._write(NOTICE, json.dumps(dict(notice), sort_keys=True))

    def request(self, name: str) -> None:
        """Create `ctl/stop` or `ctl/kill` (the launcher acts on its existence)."""
        self._write(name, "")

    def notice_path(self) -> str:
        """Where the job reads its notice (the handoff directory has one path in both containers)."""
        return str(self.path / CTL / NOTICE)

    def started(self) -> bool:
        return read_small(self._dir, STARTED) is not None

    def exit_status(self) -> tuple[int, str] | None:
        """(status, message) once the launcher recorded the end; None before."""
        try:
            data = read_small(self._dir, EXIT)
        except ValueError as e:
            return EXIT_INVALID, f"the job container's exit record is invalid: {e}"
        if data is None:
            return None
        try:
            code = parse_exit(data)
        except ValueError as e:
            return EXIT_INVALID, f"the job container's exit record is invalid: {e}"
        if _exists(self._dir, LOST):
            return code, "the job container restarted while the job ran: the job was lost and not run again"
        return code, ""

    def open_log(self) -> int | None:
        """A descriptor of `out.log` (None while it does not exist; ValueError when it is not
        a regular file). Held open: a file renamed over it later is not read."""
        return _open_tenant(self._dir, LOG)

    def close(self) -> None:
        for fd in (self._ctl, self._dir):
            if fd is not None:
                with contextlib.suppress(OSError):  # closed already: nothing to release
                    os.close(fd)
        self._ctl = None

    def _write(self, name: str, text: str) -> None:
        """Write `ctl/<name>` atomically (a temporary file renamed over it), mode 0640."""
        if self._ctl is None:
            raise HandoffRefused("the pod was not claimed")
        tmp = f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self._ctl)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                     dir_fd=self._ctl)
        try:
            os.fchown(fd, -1, self._gid)
            os.fchmod(fd, 0o640)
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=self._ctl, dst_dir_fd=self._ctl)


class PodProcess:
    """The handed-over job, seen like a `subprocess.Popen`: `wait`, `poll`, `returncode`, and
    `stop(grace_s)`. One thread follows the launcher's files: `started`, `out.log` (copied
    into `pump`, a `LogPump`, which it closes at the end) and `exit`.

    Invariant: `returncode` is set once and never changes; after it is set the log has been
    read to its end (or its reading was refused) and the pump is closed."""

    pid = 0  # the job's process lives in another container: nothing here to signal

    def __init__(self, handoff: Handoff, pump: Any) -> None:
        self.handoff, self.pump = handoff, pump
        self.returncode: int | None = None
        self.message = ""
        self.started_at: float | None = None
        self._ended = threading.Event()
        self._started = threading.Event()
        self._log_fd: int | None = None
        self._log_refused = False
        self.thread = threading.Thread(target=self._follow, name="handoff", daemon=True)
        self.thread.start()

    def wait_started(self, timeout_s: float) -> None:
        """Return once the launcher started the job (or it already ended). Raises RuntimeError
        after `timeout_s` and asks the launcher never to start it (`kill`)."""
        deadline = time.monotonic() + timeout_s
        while not self._started.wait(POLL_S):
            if self._ended.is_set():
                return
            if time.monotonic() >= deadline:
                self._request(KILL)
                self._end(125, "")
                raise RuntimeError(f"the pod's job container did not start the job within {timeout_s:g} s "
                                   "(is its launcher running?)")

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired("handoff", timeout or 0)
        self.thread.join(timeout=5.0)
        assert self.returncode is not None
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode

    def stop(self, grace_s: float) -> None:
        """`stop` now, `kill` after `grace_s`; a launcher that does not confirm the end within
        KILL_WAIT_S after that is given up on: the attempt ends as killed (137)."""
        self._request(STOP)
        if self._ended.wait(max(0.0, grace_s)):
            return
        self._request(KILL)
        if not self._ended.wait(KILL_WAIT_S):
            self._end(137, "the pod's job container did not confirm the job's end after the kill request")

    def _request(self, name: str) -> None:
        try:
            self.handoff.request(name)
        except OSError as e:
            self.message = f"{name} request not written: {e}"[:300]

    def _end(self, code: int, message: str) -> None:
        if self._ended.is_set():
            return
        if message:
            self.message = message
        self.returncode = code
        self._ended.set()

    def _follow(self) -> None:
        try:
            while not self._ended.is_set():
                if not self._started.is_set() and self._check(self.handoff.started):
                    self.started_at = time.time()
                    self._started.set()
                status = self._check(self.handoff.exit_status)
                self._copy_log(_COPY_MAX)
                if status:
                    self._copy_log(self._log_left())  # what it wrote before the end was recorded
                    self._end(*status)
                    break
                time.sleep(POLL_S)
        finally:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            masker = getattr(self.pump, "masker", None)
            if masker is not None:
                self.pump.feed(masker.flush())
            self.pump.close()

    def _check(self, probe: Any) -> Any:
        try:
            return probe()
        except (OSError, ValueError):
            return None

    def _log_left(self) -> int:
        """Bytes of out.log not copied yet, as of now: the last copy stops there even if
        something still writes (the launcher ran the tenant's shell)."""
        if self._log_fd is None:
            return _COPY_MAX
        try:
            return max(0, os.fstat(self._log_fd).st_size - os.lseek(self._log_fd, 0, os.SEEK_CUR))
        except OSError:
            return 0

    def _copy_log(self, limit: int) -> None:
        """Copy what `out.log` has gained since the last look, at most `limit` bytes
        (nothing once refused)."""
        if self._log_fd is None and not self._log_refused:
            try:
                self._log_fd = self.handoff.open_log()
            except (OSError, ValueError) as e:
                self._log_refused = True
                self.pump.feed(f"[broker] the job's output was not read: {e}\n".encode())
        if self._log_fd is None:
            return
        masker = getattr(self.pump, "masker", None)
        while limit > 0:
            try:
                data = os.read(self._log_fd, min(_CHUNK, limit))
            except OSError:
                return
            if not data:
                return
            limit -= len(data)
            self.pump.feed(masker.feed(data) if masker is not None else data)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False

