"""The Python job sandbox, attacked through the real runner.

Every escape is a small job script run by :func:`run_confined` in a real confined
child; the script tries the escape and writes what happened into its output, and the
test asserts the attempt was refused or bounded. Services the attacks aim at (PostgreSQL,
Redis, NATS on loopback) are checked from the test process first, so a refusal means
the sandbox stopped it, not that nothing was listening.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.enclave import sandbox, sandbox_child
from cleanroom.enclave.sandbox import (
    PUBLISHED,
    Confinement,
    Limits,
    SandboxResult,
    probe_confinement,
    run_confined,
)
from cleanroom.errors import InvalidInputError, SandboxUnavailableError

SECRET = "s3cr3t-cleanroom-canary-7f1c"  # noqa: S105 - a canary, not a credential
FAST = Limits(
    cpu_seconds=5, memory_bytes=1 << 30, output_bytes=1 << 20, open_files=32, wall_seconds=20
)
LOOPBACK_SERVICES = {"postgresql": 5432, "redis": 6379, "nats": 4222}
PG_SOCKET = Path("/var/run/postgresql/.s.PGSQL.5432")

PRELUDE = """\
import json, os, sys
from pathlib import Path
INPUTS, OUTPUT = Path(sys.argv[1]), Path(sys.argv[2])
results = {}
def attempt(name, fn):
    try:
        results[name] = "allowed: " + repr(fn())[:200]
    except BaseException as exc:
        results[name] = type(exc).__name__ + ": " + str(exc)[:200]
    (OUTPUT / "result.json").write_text(json.dumps(results))
"""

# skipped on a machine that cannot confine a job; CI (CLEANROOM_REQUIRE_SANDBOX=1) fails instead
pytestmark = pytest.mark.skipif(
    not probe_confinement().enforced and os.environ.get("CLEANROOM_REQUIRE_SANDBOX") != "1",
    reason="this machine lacks Landlock or seccomp",
)


@dataclasses.dataclass
class Area:
    """A job area as the runtime lays it out: bundle, inputs, output, and neighbours."""

    root: Path

    @property
    def bundle(self) -> Path:
        return self.root / "job" / "bundle"

    @property
    def inputs(self) -> Path:
        return self.root / "job" / "inputs"

    @property
    def output(self) -> Path:
        return self.root / "job" / "output"

    def run(
        self, source: str, limits: Limits = FAST, entry: str = "job.py"
    ) -> tuple[SandboxResult, dict[str, str]]:
        (self.bundle / entry).write_text(PRELUDE + textwrap.dedent(source))
        result = run_confined(self.bundle, entry, self.inputs, self.output, limits)
        written = self.output / "result.json"
        return result, json.loads(written.read_text()) if written.exists() else {}


@pytest.fixture
def area() -> Iterator[Area]:
    # not under pytest's 0700 base: the sandbox user must be able to reach the job
    root = Path(tempfile.mkdtemp(prefix="cleanroom-sandbox-"))
    root.chmod(0o711)
    job = Area(root)
    for path in (job.bundle, job.inputs, job.output):
        path.mkdir(parents=True)
    (job.inputs / "data.csv").write_text("region,amount\nnorth,10\nsouth,32\nnorth,5\n")
    # another job's files, owned by the same sandbox user: only Landlock stands between
    other = root / "other-job" / "output"
    other.mkdir(parents=True)
    (other / "result.csv").write_text(SECRET)
    for path in (other.parent, other, other / "result.csv"):
        os.chown(path, 65534, 65534)
    other.parent.chmod(0o700)
    # a keystore beside the runtime's job directories
    (root / "keystore.json").write_text(json.dumps({"private_key": SECRET}))
    (root / "keystore.json").chmod(0o600)
    yield job
    shutil.rmtree(root)


def refused(value: str) -> bool:
    return not value.startswith("allowed")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ the probe and the refusal
def test_probe_reports_landlock_and_seccomp_on_this_machine() -> None:
    found = probe_confinement()
    release = tuple(int(p) for p in os.uname().release.split(".")[:2])
    if release >= (6, 12):  # Landlock ABI 6: signal and abstract-socket scopes
        assert found.landlock_abi is not None
        assert found.landlock_abi >= 6
    assert found.seccomp
    assert found.uid_dropped == (os.geteuid() == 0)


def test_the_child_reports_every_layer_the_probe_found(area: Area) -> None:
    result, seen = area.run('attempt("ids", lambda: (os.getresuid(), os.getresgid()))')
    assert result.ok, result
    found = probe_confinement()
    assert result.confinement.landlock_abi == found.landlock_abi
    assert result.confinement.seccomp == found.seccomp
    assert result.confinement.rlimits
    assert result.confinement.no_new_privs
    if os.geteuid() == 0:
        assert result.confinement.uid_dropped
        assert seen["ids"] == "allowed: ((65534, 65534, 65534), (65534, 65534, 65534))"


@pytest.mark.parametrize(
    ("landlock_abi", "seccomp"),
    # nothing; seccomp alone (no file-system fence); Landlock alone (UDP, unix sockets, fork)
    [(None, False), (None, True), (7, False)],
)
def test_refuses_to_run_without_both_landlock_and_seccomp(
    area: Area, landlock_abi: int | None, seccomp: bool
) -> None:
    (area.bundle / "job.py").write_text("open('ran', 'w').close()\n")
    degraded = Confinement(
        landlock_abi=landlock_abi,
        seccomp=seccomp,
        uid_dropped=True,
        rlimits=True,
        no_new_privs=True,
    )
    with pytest.raises(SandboxUnavailableError, match="needs both Landlock and seccomp"):
        run_confined(area.bundle, "job.py", area.inputs, area.output, FAST, probe=lambda: degraded)
    assert list(area.output.iterdir()) == []


@pytest.mark.parametrize("entry", ["../job.py", "/etc/passwd.py", "job.txt", "missing.py"])
def test_an_entry_outside_the_bundle_is_bad_input(area: Area, entry: str) -> None:
    (area.bundle / "job.txt").write_text("")
    with pytest.raises(InvalidInputError):
        run_confined(area.bundle, entry, area.inputs, area.output, FAST)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="open_files"):
        Limits(open_files=0)
    with pytest.raises(ValueError, match="wall_seconds"):
        Limits(wall_seconds=0)


@pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None
    and os.environ.get("CLEANROOM_REQUIRE_SANDBOX") != "1",
    reason="no libseccomp to compare the syscall tables with",
)
def test_the_syscall_tables_match_libseccomp() -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for machine, arch in sandbox_child.AUDIT_ARCH.items():
        table = {
            **sandbox_child.DENIED_SYSCALLS[machine],
            **sandbox_child.CHECKED_SYSCALLS[machine],
        }
        for name, number in table.items():
            assert lib.seccomp_syscall_resolve_name_arch(arch, name.encode()) == number, name


def run_bpf(program: list[tuple[int, int, int, int]], data: bytes) -> int:
    """A classic-BPF interpreter for the few instructions the filter uses."""
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = int.from_bytes(data[k : k + 4], "little")
        elif code == 0x06:  # ret k
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf


def seccomp_data(arch: int, nr: int, *args: int) -> bytes:
    padded = [*args, *[0] * (6 - len(args))]
    return struct.pack("<iIQ6Q", nr, arch, 0, *padded)


ALLOW, EPERM, ENOSYS, KILL = 0x7FFF0000, 0x00050001, 0x00050026, 0x80000000
THREAD_FLAGS = 0x003D0F00  # what glibc's pthread_create passes (CLONE_VM ... CLONE_THREAD ...)


@pytest.mark.parametrize("machine", sorted(sandbox_child.AUDIT_ARCH))
def test_the_seccomp_filter_decides_as_designed(machine: str) -> None:
    pid = 4242
    program = sandbox_child.seccomp_program(machine, pid)
    arch = sandbox_child.AUDIT_ARCH[machine]
    nr = {**sandbox_child.DENIED_SYSCALLS[machine], **sandbox_child.CHECKED_SYSCALLS[machine]}
    read = {"x86_64": 0, "aarch64": 63}[machine]
    cases = [
        (seccomp_data(arch, read, 3), ALLOW),
        (seccomp_data(arch, nr["socket"], 2, 1, 0), EPERM),
        (seccomp_data(arch, nr["ptrace"], 16, 1), EPERM),
        (seccomp_data(arch, nr["kill"], 1, 9), EPERM),
        (seccomp_data(arch, nr["clone3"], 0, 88), ENOSYS),
        (seccomp_data(arch, nr["clone"], THREAD_FLAGS), ALLOW),
        (seccomp_data(arch, nr["clone"], 0x11), EPERM),  # fork: SIGCHLD only
        (seccomp_data(arch, nr["clone"], 0x4111), EPERM),  # vfork: CLONE_VM | CLONE_VFORK
        (seccomp_data(arch, nr["clone"], THREAD_FLAGS | 0x10000000), EPERM),  # + CLONE_NEWUSER
        (seccomp_data(arch, nr["tgkill"], pid, pid + 1, 6), ALLOW),
        (seccomp_data(arch, nr["tgkill"], pid + 1, pid + 1, 9), EPERM),
        (seccomp_data(arch, nr["tgkill"], (1 << 32) | pid, pid, 9), EPERM),  # high bits set
        (seccomp_data(0x40000003, read, 3), KILL),  # i386
        (seccomp_data(arch ^ 1, read, 3), KILL),
    ]
    if machine == "x86_64":
        cases.append((seccomp_data(arch, 0x40000000 | 39), KILL))  # x32 getpid
    for data, expected in cases:
        assert run_bpf(program, data) == expected, struct.unpack("<iIQ6Q", data)[:4]


# ------------------------------------------------------------------ escapes: the network
def test_tcp_to_loopback_services_is_refused(area: Area) -> None:
    ports = {name: port for name, port in LOOPBACK_SERVICES.items() if listening(port)}
    if not ports:
        pytest.skip("no loopback service listens here to aim at")
    result, seen = area.run(
        f"""
        import socket
        for name, port in {ports!r}.items():
            attempt(name, lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
        attempt("ipv6", lambda: socket.create_connection(("::1", 6379), timeout=2))
        """
    )
    assert result.ok
    for name in ports:
        assert seen[name].startswith("PermissionError"), seen
    assert refused(seen["ipv6"])


def test_udp_to_loopback_is_refused(area: Area) -> None:
    result, seen = area.run(
        f"""
        import socket
        def send(port):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            return s.sendto(b"{SECRET}", ("127.0.0.1", port))
        for port in (53, 5432, 6379, 4222):
            attempt(f"udp {{port}}", lambda: send(port))
        """
    )
    assert result.ok
    assert len(seen) == 4
    assert all(v.startswith("PermissionError") for v in seen.values()), seen


@pytest.mark.skipif(not PG_SOCKET.exists(), reason="no PostgreSQL unix socket here")
def test_a_unix_socket_is_refused(area: Area) -> None:
    result, seen = area.run(
        f"""
        import socket
        def connect(kind):
            s = socket.socket(socket.AF_UNIX, kind)
            s.connect("{PG_SOCKET}")
            return s
        attempt("stream", lambda: connect(socket.SOCK_STREAM))
        attempt("abstract", lambda: socket.socket(socket.AF_UNIX).connect(b"\\0cleanroom"))
        attempt("pair", lambda: socket.socketpair())
        """
    )
    assert result.ok
    assert all(v.startswith("PermissionError") for v in seen.values()), seen


def test_dns_lookup_is_refused(area: Area) -> None:
    # the lookup is tried only once socket() is known refused, so a broken sandbox
    # never sends a query to the machine's resolver
    result, seen = area.run(
        """
        import socket
        attempt("udp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        if not results["udp socket"].startswith("allowed"):
            attempt("lookup", lambda: socket.getaddrinfo("cleanroom.example", 443))
            attempt("hosts file", lambda: Path("/etc/hosts").read_text())
            attempt("resolver", lambda: Path("/etc/resolv.conf").read_text())
        """
    )
    assert result.ok
    assert seen["udp socket"].startswith("PermissionError")
    assert seen["lookup"].startswith("gaierror"), seen
    assert seen["hosts file"].startswith("PermissionError")
    assert seen["resolver"].startswith("PermissionError")


# ------------------------------------------------------------------ escapes: files
def test_reading_outside_the_job_is_refused(area: Area) -> None:
    result, seen = area.run(
        f"""
        attempt("input", lambda: (INPUTS / "data.csv").read_text())
        attempt("passwd", lambda: Path("/etc/passwd").read_text())
        attempt("etc", lambda: os.listdir("/etc"))
        attempt("other job", lambda: Path("{area.root}/other-job/output/result.csv").read_text())
        attempt("other job dir", lambda: os.listdir("{area.root}/other-job/output"))
        attempt("keystore", lambda: Path("{area.root}/keystore.json").read_text())
        attempt("job area", lambda: os.listdir("{area.root}"))
        attempt("root home", lambda: os.listdir("/root"))
        attempt("runtime source", lambda: os.listdir("{Path(__file__).parents[1]}"))
        attempt("parent environ", lambda: Path(f"/proc/{{os.getppid()}}/environ").read_bytes())
        attempt("pid 1 environ", lambda: Path("/proc/1/environ").read_bytes())
        attempt("proc", lambda: os.listdir("/proc"))
        """
    )
    assert result.ok
    assert seen.pop("input").startswith("allowed")
    assert all(v.startswith("PermissionError") for v in seen.values()), seen
    assert SECRET not in json.dumps(seen)


def test_writing_outside_the_output_is_refused(area: Area) -> None:
    targets = {
        "inputs": area.inputs / "planted",
        "bundle": area.bundle / "planted.py",
        "area": area.root / "planted",
        "other job": area.root / "other-job" / "output" / "planted",
        "tmp": Path("/tmp/cleanroom-sandbox-planted"),
        "shm": Path("/dev/shm/cleanroom-sandbox-planted"),
    }
    result, seen = area.run(
        f"""
        for name, path in { ({k: str(v) for k, v in targets.items()})!r}.items():
            attempt(name, lambda: Path(path).write_text("x"))
        attempt("overwrite input", lambda: open(INPUTS / "data.csv", "a").write("x"))
        attempt("remove input", lambda: (INPUTS / "data.csv").unlink())
        attempt("symlink", lambda: os.symlink("/etc/shadow", OUTPUT / "link"))
        attempt("fifo", lambda: os.mkfifo(OUTPUT / "fifo"))
        attempt("hard link", lambda: os.link(INPUTS / "data.csv", OUTPUT / "data.csv"))
        attempt("own output", lambda: (OUTPUT / "fine.txt").write_text("fine"))
        """
    )
    assert result.ok
    assert seen.pop("own output").startswith("allowed")
    assert all(refused(v) for v in seen.values()), seen
    assert not any(path.exists() for path in targets.values())
    assert not (area.output / "link").exists()
    assert not (area.output / "fifo").exists()
    assert (area.inputs / "data.csv").read_text().endswith("north,5\n")


# ------------------------------------------------------------------ escapes: processes
def test_process_creation_is_refused_but_threads_run(area: Area) -> None:
    result, seen = area.run(
        """
        import subprocess, threading
        attempt("fork", os.fork)
        attempt("subprocess", lambda: subprocess.run(["/bin/true"], check=False))
        attempt("posix_spawn", lambda: os.posix_spawn("/bin/true", ["true"], {}))
        attempt("shell", lambda: os.system("true"))
        def thread():
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
            return "joined"
        attempt("thread", thread)
        attempt("exec", lambda: os.execv("/bin/true", ["true"]))
        """
    )
    assert result.ok
    assert seen.pop("thread") == "allowed: 'joined'"
    # os.system reports a failed fork as -1 rather than raising
    assert seen.pop("shell") in ("allowed: -1", "allowed: 32512") or refused(seen["shell"])
    assert all(refused(v) for v in seen.values()), seen


def test_signals_to_the_parent_and_to_other_jobs_are_refused(area: Area) -> None:
    # another job's process, running as the same sandbox user
    sleeper = subprocess.Popen(
        ["/bin/sleep", "30"], user=65534, group=65534, extra_groups=[], start_new_session=True
    )
    try:
        result, seen = area.run(
            f"""
            import signal
            attempt("parent probe", lambda: os.kill(os.getppid(), 0))
            attempt("parent", lambda: os.kill(os.getppid(), signal.SIGWINCH))
            attempt("other job", lambda: os.kill({sleeper.pid}, signal.SIGKILL))
            attempt("other job group", lambda: os.killpg({sleeper.pid}, signal.SIGKILL))
            attempt("init", lambda: os.kill(1, 0))
            attempt("own thread", lambda: signal.pthread_kill(
                __import__("threading").main_thread().ident, 0))
            """
        )
        assert result.ok
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert seen.pop("own thread") == "allowed: None"
    assert all(v.startswith("PermissionError") for v in seen.values()), seen


def test_kernel_attack_surface_is_refused(area: Area) -> None:
    result, seen = area.run(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def call(*args):
            if libc.syscall(*args) >= 0:
                return "succeeded"
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        attempt("ptrace parent", lambda: call(101, 16, os.getppid(), 0, 0))
        attempt("unshare user", lambda: call(272, 0x10000000))
        attempt("mount", lambda: call(165, b"none", b"/tmp", b"tmpfs", 0, None))
        attempt("io_uring", lambda: call(425, 8, ctypes.create_string_buffer(120)))
        attempt("bpf", lambda: call(321, 0, None, 0))
        attempt("keyctl", lambda: call(250, 0, -3, 0))
        attempt("process_vm_readv", lambda: call(310, os.getppid(), None, 0, None, 0, 0))
        attempt("userfaultfd", lambda: call(323, 0))
        attempt("clone3", lambda: call(435, None, 0))
        attempt("shmget", lambda: call(29, 0, 4096, 0o1600))  # IPC_PRIVATE | IPC_CREAT
        attempt("shmat", lambda: call(30, 0, None, 0))
        attempt("mq_open", lambda: call(240, b"cleanroom", 0o100 | 2, 0o600, None))
        """
    )
    assert result.ok
    if os.uname().machine != "x86_64":
        pytest.skip("the numbers above are x86_64's")
    assert seen.pop("clone3").startswith("OSError: [Errno 38]"), seen  # ENOSYS: libc falls back
    assert all(v.startswith("PermissionError") for v in seen.values()), seen


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 exists on x86_64 only")
def test_an_x32_syscall_kills_the_job(area: Area) -> None:
    result, _ = area.run(
        """
        import ctypes
        ctypes.CDLL(None).syscall(0x40000000 | 39)  # getpid through the x32 ABI
        (OUTPUT / "survived").write_text("yes")
        """
    )
    assert result.failure == "crashed"
    assert not (area.output / "survived").exists()


def test_the_parents_environment_does_not_leak(area: Area) -> None:
    # run the runner in a process whose own environment holds a secret, as the enclave
    # runtime's does (its broker token, its keys' passphrase)
    source = """
        attempt("own environ", lambda: Path("/proc/self/environ").read_bytes())
        attempt("os.environ", lambda: dict(os.environ))
        attempt("parent environ", lambda: Path(f"/proc/{os.getppid()}/environ").read_bytes())
        attempt("parent cmdline", lambda: Path(f"/proc/{os.getppid()}/cmdline").read_bytes())
        """
    (area.bundle / "job.py").write_text(PRELUDE + textwrap.dedent(source))
    runner = (
        "import sys; from pathlib import Path\n"
        "from cleanroom.enclave.sandbox import Limits, run_confined\n"
        "r = run_confined(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]),"
        " Limits(memory_bytes=1 << 30))\n"
        "print(repr(r))\n"
    )
    env = {**os.environ, "CLEANROOM_BROKER_TOKEN": SECRET}
    shown = subprocess.run(
        [sys.executable, "-c", runner, str(area.bundle), "job.py", str(area.inputs),
         str(area.output)],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "failure=None" in shown.stdout, shown.stdout
    seen = json.loads((area.output / "result.json").read_text())
    assert seen["parent environ"].startswith("PermissionError")
    assert seen["parent cmdline"].startswith("PermissionError")
    assert SECRET not in json.dumps(seen)
    assert SECRET not in shown.stdout


def test_privileges_and_limits_cannot_be_regained(area: Area) -> None:
    result, seen = area.run(
        """
        import resource
        attempt("setuid 0", lambda: os.setuid(0))
        attempt("setgroups", lambda: os.setgroups([0]))
        attempt("chown output", lambda: os.chown(OUTPUT, 0, 0))
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"):
            which = getattr(resource, name)
            attempt(name, lambda: resource.setrlimit(which, (resource.RLIM_INFINITY,) * 2))
        """
    )
    assert result.ok
    assert len(seen) == 8
    assert all(refused(v) for v in seen.values()), seen


def test_the_output_directory_belongs_to_the_sandbox_user(area: Area) -> None:
    result, _ = area.run('(OUTPUT / "out.txt").write_text("x")')
    assert result.ok
    if os.geteuid() == 0:
        st = area.output.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o700)
        assert (area.output / "out.txt").stat().st_uid == 65534


@pytest.mark.parametrize(
    "report",
    [
        b"",
        b"{",
        b"[]",
        b'{"landlock_abi": 7}',
        # a report that names fewer layers than were asked for
        b'{"landlock_abi": null, "seccomp": true, "uid_dropped": true, "rlimits": true,'
        b' "no_new_privs": true, "dac_read_bypass": false}',
        b'{"landlock_abi": 7, "seccomp": false, "uid_dropped": true, "rlimits": true,'
        b' "no_new_privs": true, "dac_read_bypass": false}',
        b'{"landlock_abi": 7, "seccomp": true, "uid_dropped": false, "rlimits": true,'
        b' "no_new_privs": true, "dac_read_bypass": false}',
        b'{"landlock_abi": 7, "seccomp": true, "uid_dropped": true, "rlimits": true,'
        b' "no_new_privs": false, "dac_read_bypass": false}',
    ],
)
def test_a_short_or_malformed_report_means_refused(report: bytes) -> None:
    asked = {"landlock_abi": 7, "seccomp": True, "uid": 65534}
    assert sandbox._confinement_of(report, asked) is None
    full = (
        b'{"landlock_abi": 7, "seccomp": true, "uid_dropped": true, "rlimits": true,'
        b' "no_new_privs": true, "dac_read_bypass": false}'
    )
    assert sandbox._confinement_of(full, asked) is not None


def test_reachability_follows_every_directory_down(area: Area) -> None:
    private = area.root / "private" / "lib"
    private.mkdir(parents=True)
    private.parent.chmod(0o700)
    assert not sandbox._reachable(private, 65534, 65534)
    private.parent.chmod(0o711)
    assert sandbox._reachable(private, 65534, 65534)
    private.chmod(0o700)
    assert not sandbox._reachable(private, 65534, 65534)


# ------------------------------------------------------------------ bounded resources
@pytest.mark.parametrize(
    "hoard",
    [
        "hoard = []\nwhile True:\n    hoard.append(bytearray(64 << 20))\n",
        "import numpy as np\nhoard = np.ones((1 << 30,), dtype=np.float64)\n",
        "import pandas as pd\nhoard = pd.DataFrame({'x': range(1 << 28)})\n",
    ],
    ids=["python", "numpy", "pandas"],
)
def test_memory_exhaustion_is_bounded(area: Area, hoard: str) -> None:
    result, _ = area.run(hoard, limits=dataclasses.replace(FAST, memory_bytes=768 << 20))
    assert result.failure == "memory", result
    assert PUBLISHED["memory"] == "memory limit"


def test_a_cpu_spin_is_stopped_by_the_cpu_limit(area: Area) -> None:
    started = time.monotonic()
    result, _ = area.run("while True:\n    pass\n", limits=dataclasses.replace(FAST, cpu_seconds=1))
    assert result.failure == "timeout"
    assert time.monotonic() - started < 5


def test_a_sleeping_job_is_stopped_by_the_wall_clock(area: Area) -> None:
    started = time.monotonic()
    result, _ = area.run(
        "import time\ntime.sleep(60)\n", limits=dataclasses.replace(FAST, wall_seconds=1)
    )
    assert result.failure == "timeout"
    assert PUBLISHED["timeout"] == "time limit"
    assert time.monotonic() - started < 4


def test_one_large_file_is_stopped_by_the_file_size_limit(area: Area) -> None:
    result, _ = area.run(
        """
        with open(OUTPUT / "fill", "wb") as f:
            while True:
                f.write(b"x" * (64 << 10))
        """
    )
    assert result.failure == "output too large"
    assert (area.output / "fill").stat().st_size <= FAST.output_bytes


def test_many_files_are_stopped_by_the_output_watch(area: Area) -> None:
    result, _ = area.run(
        """
        import time
        for i in range(400):
            (OUTPUT / f"part{i}").write_bytes(b"x" * (512 << 10))
        time.sleep(30)
        """
    )
    assert result.failure == "output too large"
    assert result.duration_s < 10


def test_file_descriptors_are_bounded(area: Area) -> None:
    result, seen = area.run(
        """
        held = []
        try:
            while True:
                held.append(open(INPUTS / "data.csv"))
        except OSError as exc:
            stopped = f"{type(exc).__name__}: {exc}"
        for f in held:
            f.close()
        results.update(exhaust=stopped, held=str(len(held)))
        (OUTPUT / "result.json").write_text(json.dumps(results))
        """
    )
    assert result.ok
    assert seen["exhaust"].startswith("OSError: [Errno 24]"), seen  # EMFILE
    assert 0 < int(seen["held"]) < FAST.open_files


def test_a_secret_in_an_exception_never_reaches_the_result(area: Area) -> None:
    captured: list[bytes] = []
    (area.bundle / "job.py").write_text(
        f"import sys\nprint('{SECRET}')\nprint('{SECRET}', file=sys.stderr)\n"
        f"raise RuntimeError('the value is {SECRET}')\n"
    )
    result = run_confined(area.bundle, "job.py", area.inputs, area.output, FAST)
    assert result.failure == "crashed"
    assert SECRET not in repr(result)
    assert SECRET not in json.dumps(dataclasses.asdict(result))
    # only an explicit sink inside the enclave sees the job's log
    again = run_confined(
        area.bundle, "job.py", area.inputs, area.output, FAST, diagnostics=captured.append
    )
    assert SECRET not in repr(again)
    assert SECRET.encode() in captured[0]


# ------------------------------------------------------------------ what must still work
def test_a_pandas_and_pyarrow_job_runs(area: Area) -> None:
    result, seen = area.run(
        """
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq
        frame = pd.read_csv(INPUTS / "data.csv")
        totals = frame.groupby("region", as_index=False)["amount"].sum()
        totals["scaled"] = np.sqrt(totals["amount"].to_numpy(dtype=float))
        table = pa.Table.from_pandas(totals, preserve_index=False)
        pq.write_table(table, OUTPUT / "totals.parquet")
        results["rows"] = str(len(totals))
        (OUTPUT / "result.json").write_text(json.dumps(results))
        """
    )
    assert result.ok, result
    assert seen["rows"] == "2"
    import pyarrow.parquet as pq  # noqa: PLC0415 - only this test reads the output back

    table = pq.read_table(area.output / "totals.parquet").to_pydict()
    assert dict(zip(table["region"], table["amount"], strict=True)) == {"north": 15, "south": 32}


def test_a_scikit_learn_job_runs(area: Area) -> None:
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn is not installed in this environment")
    result, seen = area.run(
        """
        import pandas as pd
        from sklearn.linear_model import LinearRegression
        frame = pd.DataFrame({"x": [0, 1, 2, 3], "y": [1, 3, 5, 7]})
        model = LinearRegression().fit(frame[["x"]], frame["y"])
        results["slope"] = str(round(float(model.coef_[0]), 3))
        (OUTPUT / "result.json").write_text(json.dumps(results))
        """
    )
    assert result.ok, result
    assert seen["slope"] == "2.0"


def test_an_onnxruntime_job_runs(area: Area) -> None:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("onnxruntime (and onnx, to build the model) are not installed here")
    from onnx import TensorProto, helper  # noqa: PLC0415 - optional, only this test

    double = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(double, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (area.inputs / "double.onnx").write_bytes(model.SerializeToString())
    result, seen = area.run(
        """
        import numpy as np
        import onnxruntime
        session = onnxruntime.InferenceSession(
            str(INPUTS / "double.onnx"), providers=["CPUExecutionProvider"]
        )
        (y,) = session.run(None, {"x": np.array([[1.5], [4.0]], dtype=np.float32)})
        results["y"] = str(y.ravel().tolist())
        (OUTPUT / "result.json").write_text(json.dumps(results))
        """
    )
    assert result.ok, result
    assert seen["y"] == "[3.0, 8.0]"
