"""The child side of the Python job sandbox: confine this process, then run the job.

:func:`cleanroom.enclave.sandbox.run_confined` starts this module as
``python -I -m cleanroom.enclave.sandbox_child CONFIG`` with an empty environment. It
confines itself, reports what it applied, and only then reads and runs the job.

Invariants:

* **No job code runs before every layer the parent asked for is in force**, applied in
  this order: (1) rlimits, (2) capabilities and the uid/gid drop, (3) no_new_privs,
  (4) Landlock, (5) seccomp. A layer that cannot be applied ends the process with
  :data:`EXIT_REFUSED` before the job's file is even opened.
* **The report cannot be forged by the job**: what was applied is written to a pipe the
  parent passed, and that pipe is closed before the job runs.
* **Only the standard library is imported**, and all of it before the confinement, so
  this module widens nothing the job can reach.
* Raw primitives (syscall numbers, BPF) live here, where the name warns; the safe entry
  point is :func:`cleanroom.enclave.sandbox.run_confined`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import runpy
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# exit statuses the parent maps to failure categories; 0 is success
EXIT_CRASHED: Final = 120  # the job raised or exited non-zero
EXIT_MEMORY: Final = 121  # MemoryError: the address-space limit
EXIT_OUTPUT: Final = 122  # EFBIG and friends: the file-size limit
EXIT_REFUSED: Final = 123  # a requested layer could not be applied; the job never ran

# ---------------------------------------------------------------- syscalls and constants
# Same numbers on x86_64 and aarch64 (the new "common" table).
SYS_LANDLOCK_CREATE_RULESET: Final = 444
SYS_LANDLOCK_ADD_RULE: Final = 445
SYS_LANDLOCK_RESTRICT_SELF: Final = 446

AUDIT_ARCH: Final[Mapping[str, int]] = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT: Final = 0x40000000

# Denied outright (EPERM). Checked against libseccomp's tables in tests/test_sandbox.py.
# fmt: off
DENIED_SYSCALLS: Final[Mapping[str, Mapping[str, int]]] = {
    "x86_64": {
        "socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "execve": 59, "kill": 62,
        "ptrace": 101, "rt_sigqueueinfo": 129, "pivot_root": 155, "chroot": 161,
        "mount": 165, "umount2": 166, "init_module": 175, "delete_module": 176,
        "tkill": 200, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
        "unshare": 272, "rt_tgsigqueueinfo": 297, "perf_event_open": 298,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
        "kexec_file_load": 320, "bpf": 321, "execveat": 322, "userfaultfd": 323,
        "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434,
        "pidfd_getfd": 438, "mount_setattr": 442,
        # System V and POSIX IPC: a channel to another job (or daemon) of the same uid
        "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66,
        "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
        "semtimedop": 220, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
        "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
    },
    "aarch64": {
        "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "unshare": 97,
        "kexec_load": 104, "init_module": 105, "delete_module": 106, "ptrace": 117,
        "kill": 129, "tkill": 130, "rt_sigqueueinfo": 138, "socket": 198, "socketpair": 199,
        "add_key": 217, "request_key": 218, "keyctl": 219, "execve": 221,
        "rt_tgsigqueueinfo": 240, "perf_event_open": 241, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "finit_module": 273, "bpf": 280, "execveat": 281,
        "userfaultfd": 282, "kexec_file_load": 294, "pidfd_send_signal": 424,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "pidfd_open": 434, "pidfd_getfd": 438,
        "mount_setattr": 442,
        "mq_open": 180, "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183,
        "mq_notify": 184, "mq_getsetattr": 185, "msgget": 186, "msgctl": 187, "msgrcv": 188,
        "msgsnd": 189, "semget": 190, "semctl": 191, "semtimedop": 192, "semop": 193,
        "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197,
    },
}
# fmt: on
# Checked by argument: clone (threads only), tgkill (this process only); clone3 is ENOSYS.
CHECKED_SYSCALLS: Final[Mapping[str, Mapping[str, int]]] = {
    "x86_64": {"clone": 56, "tgkill": 234, "clone3": 435},
    "aarch64": {"clone": 220, "tgkill": 131, "clone3": 435},
}

CLONE_THREAD: Final = 0x00010000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NEW_NAMESPACES: Final = 0x7E020000

PR_SET_DUMPABLE: Final = 4
PR_SET_KEEPCAPS: Final = 8
PR_GET_SECCOMP: Final = 21
PR_SET_SECCOMP: Final = 22
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
SECCOMP_MODE_FILTER: Final = 2
CAP_DAC_READ_SEARCH: Final = 2
LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

# Landlock access rights (include/uapi/linux/landlock.h)
FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
FS_REMOVE_DIR: Final = 1 << 4
FS_REMOVE_FILE: Final = 1 << 5
FS_MAKE_DIR: Final = 1 << 7
FS_MAKE_REG: Final = 1 << 8
FS_REFER: Final = 1 << 13  # ABI 2
FS_TRUNCATE: Final = 1 << 14  # ABI 3
FS_IOCTL_DEV: Final = 1 << 15  # ABI 5
NET_BIND_TCP: Final = 1 << 0  # ABI 4
NET_CONNECT_TCP: Final = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1  # ABI 6
RULE_PATH_BENEATH: Final = 1
CREATE_RULESET_VERSION: Final = 1 << 0
FILE_RIGHTS: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

NPROC_CEILING: Final = 256  # tasks of the sandbox uid: fork is refused, this bounds threads

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, *([ctypes.c_ulong] * 4)]


class ConfinementError(OSError):
    """A layer could not be applied (raised in the child only, before the job runs)."""


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise ConfinementError(code, f"{what}: {os.strerror(code)}")
    return result


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return int(_libc.prctl(option, arg2, arg3, 0, 0))  # unused arguments must be zero


# ---------------------------------------------------------------- probes (used by the parent)
def landlock_abi() -> int | None:
    """The kernel's Landlock ABI version, or ``None`` where Landlock is off or unknown."""
    if os.uname().machine not in AUDIT_ARCH:
        return None
    abi = int(
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(CREATE_RULESET_VERSION),
        )
    )
    return abi if abi > 0 else None


def seccomp_available() -> bool:
    """Whether this kernel and architecture take the seccomp filter this module builds."""
    return os.uname().machine in AUDIT_ARCH and _prctl(PR_GET_SECCOMP) >= 0


# ---------------------------------------------------------------- (1) rlimits
@dataclass(frozen=True)
class ChildLimits:
    cpu_seconds: int
    memory_bytes: int
    output_bytes: int
    open_files: int


def apply_rlimits(limits: ChildLimits) -> None:
    # soft = hard, so the job cannot raise a limit back; CPU gets one second of grace
    # between SIGXCPU (soft) and SIGKILL (hard)
    table = (
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.output_bytes, limits.output_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    )
    for which, soft, hard in table:
        resource.setrlimit(which, (soft, hard))


# ---------------------------------------------------------------- (2) capabilities and uid
class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _set_capabilities(keep: int) -> None:
    """Effective and permitted := ``keep`` (a mask of capabilities 0-31); inheritable none."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
    _check(int(_libc.capset(ctypes.byref(header), data)), "capset")


def _capabilities() -> tuple[int, int]:
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(int(_libc.capget(ctypes.byref(header), data)), "capget")
    effective = data[0].effective | data[1].effective << 32
    permitted = data[0].permitted | data[1].permitted << 32
    return effective, permitted


def drop_privileges(uid: int | None, gid: int | None, *, keep_dac_read: bool) -> None:
    """Become ``uid``/``gid`` with no supplementary groups and no capabilities.

    ``keep_dac_read`` keeps CAP_DAC_READ_SEARCH alone, for an interpreter the sandbox user
    cannot reach (installed under a private home); the parent asks for it only with
    Landlock in force, which then is what fences every read.
    """
    keep = 1 << CAP_DAC_READ_SEARCH if keep_dac_read else 0
    if uid is None or gid is None:
        _set_capabilities(0)  # whatever a container granted, the job gets none
    else:
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text(encoding="ascii"))
        for cap in range(last_cap + 1):  # while still privileged: CAP_SETPCAP
            if not keep & (1 << cap):
                _check(_prctl(PR_CAPBSET_DROP, cap), "PR_CAPBSET_DROP")
        _check(_prctl(PR_SET_KEEPCAPS, 1 if keep else 0), "PR_SET_KEEPCAPS")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _set_capabilities(keep)
        _check(_prctl(PR_SET_KEEPCAPS, 0), "PR_SET_KEEPCAPS")
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise ConfinementError(errno.EPERM, "the uid/gid drop did not hold")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise ConfinementError(errno.EPERM, "uid 0 could be regained")
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), "PR_CAP_AMBIENT")
    _check(_prctl(PR_SET_DUMPABLE, 0), "PR_SET_DUMPABLE")  # /proc/self and ptrace: root only
    if _capabilities() != (keep, keep):
        raise ConfinementError(errno.EPERM, "capabilities remain")


# ---------------------------------------------------------------- (4) Landlock
class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def apply_landlock(abi: int, read_only: Sequence[str], read_write: Sequence[str]) -> None:
    """Restrict this thread (the only one) to reading ``read_only`` and using ``read_write``.

    Everything the ABI can name is handled, so whatever is not granted is denied: no
    execute anywhere, no symlinks, sockets, FIFOs or devices made, no IOCTL on devices;
    on ABI 4+ no TCP bind or connect; on ABI 6+ no abstract unix sockets or signals
    outside this domain.
    """
    handled = _fs_rights(abi)
    read = FS_READ_FILE | FS_READ_DIR
    write = read | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG
    write |= handled & (FS_REFER | FS_TRUNCATE)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP  # and no rule allows either
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = _check(
        int(
            _libc.syscall(
                ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
                ctypes.byref(attr),
                ctypes.c_size_t(size),
                ctypes.c_uint32(0),
            )
        ),
        "landlock_create_ruleset",
    )
    try:
        for paths, rights in ((read_only, read), (read_write, write)):
            for path in paths:
                _add_path_rule(ruleset, path, rights)
        _check(
            int(
                _libc.syscall(
                    ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF),
                    ctypes.c_int(ruleset),
                    ctypes.c_uint32(0),
                )
            ),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)


def _add_path_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # an optional system directory (/lib64 on aarch64)
    try:
        if not Path(path).is_dir():
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        _check(
            int(
                _libc.syscall(
                    ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
                    ctypes.c_int(ruleset),
                    ctypes.c_int(RULE_PATH_BENEATH),
                    ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
            ),
            f"landlock_add_rule {path}",
        )
    finally:
        os.close(fd)


# ---------------------------------------------------------------- (5) seccomp
_BPF_LD_W_ABS: Final = 0x20
_BPF_JEQ: Final = 0x15
_BPF_JGE: Final = 0x35
_BPF_JSET: Final = 0x45
_BPF_RET: Final = 0x06
_RET_KILL_PROCESS: Final = 0x80000000
_RET_ERRNO: Final = 0x00050000
_RET_ALLOW: Final = 0x7FFF0000
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_OFF_ARG0_LO: Final = 16  # args[0], little-endian on both supported architectures
_OFF_ARG0_HI: Final = 20

Jump = int | str  # an offset or a label
Instruction = tuple[int, Jump, Jump, int]


def _assemble(program: Sequence[Instruction | str]) -> list[tuple[int, int, int, int]]:
    """Resolve labels (strings in the program) into the relative jumps BPF takes."""
    labels: dict[str, int] = {}
    code: list[Instruction] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = []
    for index, (op, jt, jf, k) in enumerate(code):

        def offset(target: Jump, here: int = index) -> int:
            if isinstance(target, int):
                return target
            distance = labels[target] - here - 1
            if not 0 <= distance <= 255:
                raise ValueError("BPF jump out of range")
            return distance

        out.append((op, offset(jt), offset(jf), k))
    return out


def seccomp_program(machine: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF filter for ``machine``, as (code, jt, jf, k) instructions.

    Order of checks: (a) the architecture is the one the tables are for, else kill (no
    32-bit or foreign-ABI syscalls); (b) on x86_64 no x32 syscall numbers; (c) denied
    syscalls return EPERM; (d) clone3 returns ENOSYS so libc falls back to clone; (e)
    clone only for threads and without new namespaces; (f) tgkill only to this process.
    """
    denied = DENIED_SYSCALLS[machine]
    checked = CHECKED_SYSCALLS[machine]
    eperm = _RET_ERRNO | errno.EPERM
    program: list[Instruction | str] = [
        (_BPF_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_BPF_JEQ, 0, "kill", AUDIT_ARCH[machine]),
        (_BPF_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if machine == "x86_64":
        program.append((_BPF_JGE, "kill", 0, X32_SYSCALL_BIT))
    program += [(_BPF_JEQ, "eperm", 0, nr) for nr in sorted(denied.values())]
    program += [
        (_BPF_JEQ, "enosys", 0, checked["clone3"]),
        (_BPF_JEQ, "clone", 0, checked["clone"]),
        (_BPF_JEQ, "tgkill", 0, checked["tgkill"]),
        (_BPF_RET, 0, 0, _RET_ALLOW),
        "clone",
        (_BPF_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        (_BPF_JSET, "eperm", 0, CLONE_NEW_NAMESPACES),
        (_BPF_JSET, "allow", "eperm", CLONE_THREAD),
        "tgkill",
        (_BPF_LD_W_ABS, 0, 0, _OFF_ARG0_HI),
        (_BPF_JEQ, 0, "eperm", 0),
        (_BPF_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        (_BPF_JEQ, "allow", "eperm", pid),
        # BPF jumps only forward: the returns come last
        "allow",
        (_BPF_RET, 0, 0, _RET_ALLOW),
        "eperm",
        (_BPF_RET, 0, 0, eperm),
        "enosys",
        (_BPF_RET, 0, 0, _RET_ERRNO | errno.ENOSYS),
        "kill",
        (_BPF_RET, 0, 0, _RET_KILL_PROCESS),
    ]
    return _assemble(program)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def apply_seccomp() -> None:
    machine = os.uname().machine
    instructions = seccomp_program(machine, os.getpid())
    raw = b"".join(struct.pack("<HBBI", *ins) for ins in instructions)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    prog = _SockFprog(len(instructions), ctypes.addressof(buffer))
    _check(_prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog)), "PR_SET_SECCOMP")


# ---------------------------------------------------------------- the sequence
def _single_threaded() -> bool:
    # Landlock and seccomp bind the calling thread only: there must be no other yet
    try:
        return len(list(Path("/proc/self/task").iterdir())) == 1
    except OSError:
        return False


def confine(config: Mapping[str, object]) -> dict[str, object]:
    """Apply every requested layer, in order, or raise. Returns what is in force."""
    if not _single_threaded():
        raise ConfinementError(errno.EPERM, "more than one thread before confinement")
    limits = config["limits"]
    if not isinstance(limits, dict):
        raise ConfinementError(errno.EINVAL, "no limits")
    # (1) rlimits: while still privileged, hard = soft
    apply_rlimits(ChildLimits(**limits))
    # (2) no capabilities, the sandbox uid and gid
    uid, gid = config["uid"], config["gid"]
    if not (uid is None or isinstance(uid, int)) or not (gid is None or isinstance(gid, int)):
        raise ConfinementError(errno.EINVAL, "bad uid or gid")
    keep_dac_read = config["keep_dac_read"] is True
    if keep_dac_read and config["landlock_abi"] is None:
        raise ConfinementError(errno.EPERM, "a read bypass needs Landlock")
    drop_privileges(uid, gid, keep_dac_read=keep_dac_read)
    if uid is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC_CEILING, NPROC_CEILING))
    # (3) no_new_privs: nothing later can gain a privilege through exec; needed for (4), (5)
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "PR_SET_NO_NEW_PRIVS")
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise ConfinementError(errno.EPERM, "no_new_privs did not hold")
    # (4) Landlock: the file system and TCP
    abi = config["landlock_abi"]
    if abi is not None:
        if not isinstance(abi, int) or abi < 1:
            raise ConfinementError(errno.EINVAL, "bad Landlock ABI")
        read_only, read_write = config["read_only"], config["read_write"]
        if not isinstance(read_only, list) or not isinstance(read_write, list):
            raise ConfinementError(errno.EINVAL, "bad Landlock paths")
        apply_landlock(abi, [str(p) for p in read_only], [str(p) for p in read_write])
    # (5) seccomp: sockets, process creation, signals, kernel attack surface
    if config["seccomp"] is True:
        apply_seccomp()
    return {
        "landlock_abi": abi,
        "seccomp": config["seccomp"] is True,
        "uid_dropped": uid is not None,
        "rlimits": True,
        "no_new_privs": True,
        "dac_read_bypass": keep_dac_read,
    }


def run_job(entry: str, bundle: str, inputs: str, output: str) -> int:
    """Run ``entry`` as ``__main__`` with argv ``[entry, inputs, output]``; an exit status."""
    sys.argv = [entry, inputs, output]
    sys.path.insert(0, bundle)
    sys.dont_write_bytecode = True
    try:
        runpy.run_path(entry, run_name="__main__")
    except SystemExit as exc:
        return 0 if exc.code in (None, 0) else EXIT_CRASHED
    except MemoryError:
        return EXIT_MEMORY
    except OSError as exc:
        if exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
            return EXIT_OUTPUT
        _print_exception()
        return EXIT_CRASHED
    except BaseException:  # noqa: BLE001 - any failure of the job is one category
        _print_exception()
        return EXIT_CRASHED
    return 0


def _print_exception() -> None:
    # to the captured log, which stays inside the enclave; never parsed, never published
    with contextlib.suppress(BaseException):  # printing is best effort
        sys.excepthook(*sys.exc_info())


def main(argv: Sequence[str]) -> int:
    try:
        config = json.loads(argv[1])
        report_fd = int(config["report_fd"])
        os.chdir(str(config["output"]))
        applied = confine(config)
        os.write(report_fd, json.dumps(applied).encode())
        os.close(report_fd)
    except BaseException:  # noqa: BLE001 - the job must not run half-confined
        _print_exception()
        return EXIT_REFUSED
    return run_job(
        str(config["entry"]), str(config["bundle"]), str(config["inputs"]), str(config["output"])
    )


if __name__ == "__main__":
    status = main(sys.argv)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):  # a full disk must not change the status
            stream.flush()
    os._exit(status)  # no atexit hooks of the job, no lingering job threads
