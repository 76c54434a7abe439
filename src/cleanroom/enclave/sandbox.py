"""The sandbox for Python jobs: approved code in a confined child process.

:func:`run_confined` runs one entry point of an approved bundle in a child process of
the enclave runtime (``python -I -m cleanroom.enclave.sandbox_child``), which confines
itself before it reads the job (:mod:`cleanroom.enclave.sandbox_child`): rlimits, no
capabilities and an unprivileged uid/gid when started as root, no_new_privs, Landlock
(read-only: the interpreter, its libraries, the bundle and the inputs; read-write: the
output directory; no TCP; no signals out), then a seccomp filter (no sockets at all, no
process creation beyond threads, no ptrace, namespaces, mounts, keyrings, BPF, io_uring).
The parent adds a wall-clock limit (the whole process group is killed) and watches the
size of the output directory. The layers and what each stops are in
``docs/adr/0022-python-job-sandbox.md``.

Invariants:

* **Nothing the job prints or raises comes back.** The result is a fixed category
  (:data:`Failure`), the confinement achieved, the duration and the output size. The
  job's standard output and error go to a private file that only an explicit
  ``diagnostics`` sink inside the enclave may read, never the ledger or the analyst.
* **No confinement, no run.** :func:`run_confined` raises
  :class:`SandboxUnavailableError` unless both Landlock and seccomp are available, and
  the job is counted as ``refused`` unless the child reports, before the job runs, every
  layer the parent asked for.
* The achieved :class:`Confinement` comes from the child's report, so a job record can
  say what held.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cleanroom.enclave import sandbox_child
from cleanroom.errors import InvalidInputError, SandboxUnavailableError
from cleanroom.governance.outcomes import FailureCategory

Failure = Literal["timeout", "memory", "crashed", "refused", "output too large"]

# what a sandbox failure becomes on the ledger (cleanroom.governance.outcomes)
PUBLISHED: Final[Mapping[Failure, FailureCategory]] = {
    "timeout": "time limit",
    "memory": "memory limit",
    "crashed": "internal error",
    "refused": "internal error",
    "output too large": "result too large",
}

SANDBOX_UID: Final = 65534  # nobody
SANDBOX_GID: Final = 65534  # nogroup
MAX_OUTPUT_ENTRIES: Final = 10_000  # files and directories: the watcher's walk stays bounded
WATCH_INTERVAL_S: Final = 0.25
DIAGNOSTICS_BYTES: Final = 64 << 10
SYSTEM_LIBRARIES: Final = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")
# CPU-model hints some machines need for OpenBLAS to compute correctly; no secrets
PASSED_ENVIRONMENT: Final = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(frozen=True)
class Limits:
    """What one Python job may use. Every value must be positive."""

    cpu_seconds: int = 60
    memory_bytes: int = 2 << 30  # address space: virtual, so larger than the data
    output_bytes: int = 256 << 20  # per file (RLIMIT_FSIZE) and in total (watched)
    open_files: int = 64
    wall_seconds: float = 120.0

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "output_bytes", "open_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        if not self.wall_seconds > 0:
            raise ValueError("wall_seconds must be positive")


@dataclass(frozen=True)
class Confinement:
    """The layers in force (from the child's report) or available (from the probe)."""

    landlock_abi: int | None  # None: no Landlock; 4+: TCP too; 6+: signals and abstract sockets
    seccomp: bool
    uid_dropped: bool
    rlimits: bool
    no_new_privs: bool
    # the sandbox user kept CAP_DAC_READ_SEARCH to reach an interpreter under a private
    # directory; Landlock alone then fences reads (never granted without Landlock)
    dac_read_bypass: bool = False

    @property
    def enforced(self) -> bool:
        """Both layers: Landlock fences the file system (and TCP, signals and abstract
        sockets on newer ABIs); seccomp denies socket() and process creation. Either
        alone leaves a way out (ADR 0022), so a job runs under both or not at all."""
        return self.landlock_abi is not None and self.seccomp


@dataclass(frozen=True)
class SandboxResult:
    """What the enclave may know of a run: never the job's text, output or errors."""

    failure: Failure | None
    confinement: Confinement
    duration_s: float
    output_bytes: int

    @property
    def ok(self) -> bool:
        return self.failure is None


def probe_confinement() -> Confinement:
    """The layers this machine can apply to a child of this process."""
    return Confinement(
        landlock_abi=sandbox_child.landlock_abi(),
        seccomp=sandbox_child.seccomp_available(),
        uid_dropped=os.geteuid() == 0,
        rlimits=True,
        no_new_privs=True,
    )


def run_confined(
    bundle_dir: Path,
    entry: str,
    inputs_dir: Path,
    output_dir: Path,
    limits: Limits,
    *,
    probe: Callable[[], Confinement] = probe_confinement,
    clock: Callable[[], float] = time.monotonic,
    diagnostics: Callable[[bytes], None] | None = None,
) -> SandboxResult:
    """Run ``bundle_dir/entry`` confined, as ``__main__`` with argv
    ``[entry, inputs_dir, output_dir]``, its working directory ``output_dir``.

    Raises :class:`SandboxUnavailableError` before starting anything when the machine
    cannot confine the job, and :class:`~cleanroom.errors.InvalidInputError` for an entry
    that is not a Python file inside the bundle. Every outcome of the job itself is a
    :class:`SandboxResult`. ``diagnostics``, for a debugger inside the enclave only,
    receives the first 64 KiB of the job's standard output and error.
    """
    available = probe()
    # (1) some layer fences the file system or the network, or nothing runs
    if not available.enforced:
        raise SandboxUnavailableError("a Python job needs both Landlock and seccomp here")
    # (2) the entry is a Python file inside the approved bundle
    bundle, inputs, output = (
        Path(p).resolve(strict=True) for p in (bundle_dir, inputs_dir, output_dir)
    )
    script = _entry_path(bundle, entry)
    # (3) the sandbox user: nobody when started as root
    read_only = [*_interpreter_paths(), *SYSTEM_LIBRARIES, str(bundle), str(inputs)]
    uid = gid = None
    keep_dac_read = False
    if available.uid_dropped:
        uid, gid = SANDBOX_UID, SANDBOX_GID
        keep_dac_read = not all(_reachable(Path(p), uid, gid) for p in _interpreter_paths())
        if keep_dac_read and available.landlock_abi is None:
            raise SandboxUnavailableError(
                "the sandbox user cannot read the interpreter and Landlock is unavailable"
            )
        _hand_over(bundle, inputs, output, uid, gid, check_reach=not keep_dac_read)
    config: dict[str, object] = {
        "entry": str(script),
        "bundle": str(bundle),
        "inputs": str(inputs),
        "output": str(output),
        "limits": {
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_bytes,
            "output_bytes": limits.output_bytes,
            "open_files": limits.open_files,
        },
        "uid": uid,
        "gid": gid,
        "keep_dac_read": keep_dac_read,
        "landlock_abi": available.landlock_abi,
        "read_only": read_only,
        "read_write": [str(output)],
        "seccomp": available.seccomp,
    }
    return _run(config, output, limits, clock, diagnostics)


def _entry_path(bundle: Path, entry: str) -> Path:
    relative = Path(entry)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix != ".py":
        raise InvalidInputError("the entry point must be a relative path to a .py file")
    script = (bundle / relative).resolve()
    if not script.is_relative_to(bundle) or not script.is_file():
        raise InvalidInputError("the entry point is not a file of the bundle")
    return script


def _interpreter_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, *site.getsitepackages()}
    paths.update(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib"))
    return sorted(str(Path(p).resolve()) for p in paths if Path(p).exists())


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) may search every directory down
    to ``path`` and read ``path`` itself."""
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == uid:
            bits = stat.S_IXUSR | stat.S_IRUSR
        elif st.st_gid == gid:
            bits = stat.S_IXGRP | stat.S_IRGRP
        else:
            bits = stat.S_IXOTH | stat.S_IROTH
        needed = bits if directory == path else bits & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if st.st_mode & needed != needed:
            return False
    return True


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for parent, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield Path(parent) / name


def _hand_over(
    bundle: Path, inputs: Path, output: Path, uid: int, gid: int, *, check_reach: bool
) -> None:
    """Give the sandbox user its output directory (owner, 0700) and, unless it reads
    through CAP_DAC_READ_SEARCH, group read access to the bundle and the inputs."""
    for path in _walk(output):
        os.chown(path, uid, gid, follow_symlinks=False)
    output.chmod(0o700)
    if not check_reach:
        return
    for tree in (bundle, inputs):
        for path in _walk(tree):
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chown(path, -1, gid)
            extra = stat.S_IRGRP | (stat.S_IXGRP if stat.S_ISDIR(st.st_mode) else 0)
            path.chmod(stat.S_IMODE(st.st_mode) | extra)
    for path in (bundle, inputs, output):
        if not _reachable(path, uid, gid):
            raise SandboxUnavailableError("the sandbox user cannot reach a job directory")


def child_environment(output: Path) -> dict[str, str]:
    """The whole environment of a job's child: locale, a home and a temporary
    directory in its output, one thread per numeric library; no secret."""
    env = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(output),
        "TMPDIR": str(output),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update({k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ})
    return env


def _run(
    config: dict[str, object],
    output: Path,
    limits: Limits,
    clock: Callable[[], float],
    diagnostics: Callable[[bytes], None] | None,
) -> SandboxResult:
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    config["report_fd"] = report_w
    started = clock()
    failure: Failure | None = None
    with tempfile.TemporaryFile() as log:
        try:
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our module, no shell
                [sys.executable, "-I", "-m", "cleanroom.enclave.sandbox_child", json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(output),
                cwd=output,
                close_fds=True,
                pass_fds=(report_w,),
                start_new_session=True,  # its own process group, killed as a whole
            )
        finally:
            os.close(report_w)
        try:
            failure, rusage_cpu = _wait(process, output, limits, started, clock)
            report = _read_report(report_r)
        finally:
            os.close(report_r)
            if process.returncode is None:  # the wait itself failed: leave nothing running
                _kill_group(process.pid)
                process.wait()
        duration = clock() - started
        if diagnostics is not None:
            log.seek(0)
            diagnostics(log.read(DIAGNOSTICS_BYTES))
    confinement = _confinement_of(report, config)
    if confinement is None:
        failure = "refused"
        confinement = Confinement(
            None, seccomp=False, uid_dropped=False, rlimits=False, no_new_privs=False
        )
    elif failure is None:
        failure = _classify(process.returncode, rusage_cpu, limits)
    size = _tree_size(output)
    if failure is None and (size is None or size > limits.output_bytes):
        failure = "output too large"
    return SandboxResult(failure, confinement, duration, size if size is not None else -1)


def _wait(
    process: subprocess.Popen[bytes],
    output: Path,
    limits: Limits,
    started: float,
    clock: Callable[[], float],
) -> tuple[Failure | None, float]:
    """Wait for the child; kill its group at the wall-clock limit or when the output
    directory outgrows its limit. Returns that failure (if any) and the CPU seconds used."""
    failure: Failure | None = None
    pidfd = os.pidfd_open(process.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while True:
            remaining = started + limits.wall_seconds - clock()
            if remaining <= 0:
                failure = "timeout"
                break
            if poller.poll(min(remaining, WATCH_INTERVAL_S) * 1000):
                break
            size = _tree_size(output)
            if size is None or size > limits.output_bytes:
                failure = "output too large"
                break
    finally:
        os.close(pidfd)
    # Before reaping: the leader is alive or a zombie, so its group id cannot have been
    # reused, and whatever else is in the group dies with it.
    _kill_group(process.pid)
    _, status, rusage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return failure, rusage.ru_utime + rusage.ru_stime


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _read_report(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def _confinement_of(report: bytes, config: Mapping[str, object]) -> Confinement | None:
    """The child's report, if it is well formed and names every layer asked for."""
    try:
        fields = json.loads(report)
        confinement = Confinement(
            landlock_abi=fields["landlock_abi"],
            seccomp=fields["seccomp"] is True,
            uid_dropped=fields["uid_dropped"] is True,
            rlimits=fields["rlimits"] is True,
            no_new_privs=fields["no_new_privs"] is True,
            dac_read_bypass=fields["dac_read_bypass"] is True,
        )
    except (ValueError, TypeError, KeyError):
        return None
    asked = (config["landlock_abi"], config["seccomp"], config["uid"] is not None)
    held = (confinement.landlock_abi, confinement.seccomp, confinement.uid_dropped)
    if asked != held or not (confinement.rlimits and confinement.no_new_privs):
        return None
    return confinement


_BY_STATUS: Final[Mapping[int, Failure]] = {
    sandbox_child.EXIT_MEMORY: "memory",
    sandbox_child.EXIT_OUTPUT: "output too large",
    sandbox_child.EXIT_REFUSED: "refused",
    -signal.SIGXCPU: "timeout",  # the CPU soft limit
    -signal.SIGXFSZ: "output too large",
}


def _classify(returncode: int | None, cpu_seconds: float, limits: Limits) -> Failure | None:
    if returncode == 0:
        return None
    if returncode == -signal.SIGKILL:
        # not ours (that was decided before): the CPU hard limit, or the kernel's OOM killer
        return "timeout" if cpu_seconds >= limits.cpu_seconds else "memory"
    if returncode is None:
        return "crashed"
    return _BY_STATUS.get(returncode, "crashed")


def _tree_size(root: Path) -> int | None:
    """Bytes under ``root`` (never following links), or ``None`` past
    :data:`MAX_OUTPUT_ENTRIES` entries or on an unreadable entry."""
    total = entries = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    if entries > MAX_OUTPUT_ENTRIES:
                        return None
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    else:
                        total += max(st.st_size, st.st_blocks * 512)
        except FileNotFoundError:
            continue  # removed while we looked
        except OSError:
            return None
    return total
