"""A small mutation-testing runner for the security core (``make mutation``).

For each module named in ``config.toml`` it makes mutants with the ``ast``
module, runs the module's test files against each, and reports per module how
many mutants the tests killed. A mutant that survives is a change to a
security check that no test notices: it is either killed by a new test or
listed in ``equivalent.txt`` with the reason it cannot change behaviour.

Invariants:

* the repository's ``src/`` is never written: each worker runs on its own
  copy of ``src/``, ``tests/`` and ``pyproject.toml`` in a temporary folder,
  writes a mutant over the module in that copy and puts the original back;
* every test process imports ``cleanroom`` from its worker's copy, not from the
  editable install (checked once per worker, and after every passing run: a
  pass against another copy is an error, never a survivor);
* a mutant is the original module with one node changed, rendered back with
  ``ast.unparse`` (checked: the unmutated module's rendering parses to the
  same tree as its source);
* a mutant is never run from a stale bytecode cache: the mutated module has
  no ``.pyc`` and the test processes write none;
* a mutant is *killed* when its tests fail (or error, or time out), and
  *survives* when they pass; the unmutated module must pass them first.

Mutation operators (each mutant's id is ``module:line:col:operator``):
comparison flips (``==``/``!=``, ``<``/``>=``, ``<=``/``>``, ``in``/``not in``,
``is``/``is not``), ``and``/``or``, a negated ``if`` or conditional
expression, ``raise`` replaced by ``pass``, a returned boolean negated, and
the small integers 0 and 1 moved by one either way.

Each worker keeps a fork server (:mod:`tests.mutation.forkserver`) that has
imported pytest and the third-party libraries once and forks one pytest per
mutant; ``--no-fork`` starts a fresh interpreter per mutant instead.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.toml"
EQUIVALENTS = HERE / "equivalent.txt"
PACKAGE = "cleanroom"
# pytest as every mutant runs it: stop at the first failure, no cache, no coverage, and
# hypothesis derandomised so that a run's score does not depend on the draw
PYTEST_ARGS = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:schemathesis",
    "--no-cov",
    "-x",
    "-q",
    "--hypothesis-seed=0",
    # the fork server loaded pytest's plugins before pytest could mark them for rewriting
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
)
NO_TESTS_COLLECTED = 5

_COMPARE_FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_SMALL_INTS = (0, 1)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- mutants


@dataclass(frozen=True)
class Mutant:
    module: str  # path under src/cleanroom, e.g. "ledger/verify.py"
    line: int
    col: int
    operator: str
    context: str  # the original source line
    before: str  # the original code at the site, one line
    after: str  # the mutated code at the site, one line
    source: str = field(repr=False)  # the whole mutated module

    @property
    def id(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.operator}"


def _short(node: ast.AST) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= 90 else text[:87] + "..."


def _is_bool_expression(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, bool)
    return isinstance(node, (ast.Compare, ast.BoolOp)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    )


class _Mutator(ast.NodeTransformer):
    """Counts mutation sites in a fixed (post-) order and applies the one at ``target``.

    Children are visited before their parent, so applying a mutation never
    changes which sites the rest of the walk sees: site numbers are the same
    in every pass over the same source.
    """

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.sites: list[tuple[int, int, str]] = []
        self.change: tuple[str, str] | None = None

    def _site(self, node: ast.AST, operator: str) -> bool:
        self.sites.append((getattr(node, "lineno", 0), getattr(node, "col_offset", 0), operator))
        return len(self.sites) - 1 == self.target

    def _applied(self, before: ast.AST, after: ast.AST) -> None:
        self.change = (_short(before), _short(after))

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            flipped = _COMPARE_FLIPS[type(op)]
            name = f"{type(op).__name__}->{flipped.__name__}"
            if len(node.ops) > 1:
                name += f"#{i}"
            if self._site(node, name):
                mutated = ast.Compare(
                    left=node.left,
                    ops=[flipped() if j == i else o for j, o in enumerate(node.ops)],
                    comparators=node.comparators,
                )
                self._applied(node, mutated)
                return ast.copy_location(mutated, node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        other: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        name = f"{type(node.op).__name__}->{type(other).__name__}"
        if self._site(node, name):
            mutated = ast.copy_location(ast.BoolOp(op=other, values=node.values), node)
            self._applied(node, mutated)
            return mutated
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return node  # imports for the type checker only
        self.generic_visit(node)
        if self._site(node, "if:negate"):
            before = ast.copy_location(ast.If(test=node.test, body=[], orelse=[]), node)
            node.test = ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=node.test), node.test)
            self.change = (_short(before.test), _short(node.test))
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        if self._site(node, "ifexp:negate"):
            test = ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=node.test), node.test)
            mutated = ast.copy_location(
                ast.IfExp(test=test, body=node.body, orelse=node.orelse), node
            )
            self._applied(node, mutated)
            return mutated
        return node

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        self.generic_visit(node)
        if self._site(node, "raise->pass"):
            self.change = (_short(node), "pass")
            return ast.copy_location(ast.Pass(), node)
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        self.generic_visit(node)
        if (
            node.value is not None
            and _is_bool_expression(node.value)
            and self._site(node, "return:negate")
        ):
            negated = ast.UnaryOp(op=ast.Not(), operand=node.value)
            mutated = ast.copy_location(ast.Return(value=negated), node)
            self._applied(node, mutated)
            return mutated
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if type(value) is not int or value not in _SMALL_INTS:
            return node
        for moved in (value + 1, value - 1):
            if self._site(node, f"const:{value}->{moved}"):
                mutated = ast.copy_location(ast.Constant(value=moved), node)
                self._applied(node, mutated)
                return mutated
        return node


def mutants_of(module: str, source: str) -> list[Mutant]:
    """Every mutant of ``source`` (the text of ``module``), in a stable order."""
    original = ast.parse(source)
    if ast.dump(ast.parse(ast.unparse(original))) != ast.dump(original):
        raise RuntimeError(f"{module}: ast.unparse does not render this module faithfully")
    survey = _Mutator()
    survey.visit(original)
    lines = source.splitlines()
    found: list[Mutant] = []
    for target, (line, col, operator) in enumerate(survey.sites):
        mutator = _Mutator(target)
        tree = ast.fix_missing_locations(mutator.visit(ast.parse(source)))
        if mutator.change is None:
            raise RuntimeError(f"{module}: site {target} was not applied")
        mutated = ast.unparse(tree) + "\n"
        compile(mutated, module, "exec")  # a mutant that does not compile is a runner bug
        before, after = mutator.change
        context = lines[line - 1].strip()
        found.append(Mutant(module, line, col, operator, context, before, after, mutated))
    ids = [m.id for m in found]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{module}: two mutants share an id")
    return found


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Target:
    module: str
    tests: tuple[str, ...]
    threshold: float


def load_config(path: Path = CONFIG) -> list[Target]:
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    default = float(document.get("defaults", {}).get("threshold", 95.0))
    targets = []
    for module, entry in document["modules"].items():
        tests = tuple(entry["tests"])
        if not tests:
            raise SystemExit(f"{path}: {module} lists no test files")
        targets.append(Target(module, tests, float(entry.get("threshold", default))))
    return targets


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """``id reason`` per line; ``#`` starts a comment line. Every id needs a reason."""
    equivalents: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        mutant_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: {mutant_id} is listed without a reason")
        if mutant_id in equivalents:
            raise SystemExit(f"{path}:{number}: {mutant_id} is listed twice")
        equivalents[mutant_id] = reason.strip()
    return equivalents


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | timeout | error
    seconds: float
    detail: str = ""


class _ForkServer:
    """A :mod:`tests.mutation.forkserver` process and the line protocol to it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        # run as __main__ without its folder on sys.path, as `python -m pytest` would
        launch = "import sys; exec(compile(open(sys.argv[1]).read(), sys.argv[1], 'exec'))"
        self.process = subprocess.Popen(
            [sys.executable, "-c", launch, str(HERE / "forkserver.py")],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = b""
        self.child: int | None = None
        ready = self._read(timeout=300)
        if ready is None or not ready.get("ready"):
            raise SystemExit(f"the mutation fork server did not start: {ready}")

    def _read(self, timeout: float) -> dict[str, object] | None:
        """The next message, or None if none came within ``timeout`` seconds."""
        stdout = self.process.stdout
        if stdout is None:
            raise RuntimeError("the fork server has no pipe")
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                return None
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("the mutation fork server exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, object] = json.loads(line)
        return message

    def run(self, args: Sequence[str], log: Path, timeout: float) -> tuple[int | None, str]:
        """pytest's exit code (None on timeout) and where the child imported the package."""
        stdin = self.process.stdin
        if stdin is None:
            raise RuntimeError("the fork server has no pipe")
        stdin.write((json.dumps({"args": list(args), "log": str(log)}) + "\n").encode())
        started = self._read(timeout=60)
        if started is None:
            raise RuntimeError("the mutation fork server did not start a test process")
        self.child = int(str(started["pid"]))
        try:
            finished = self._read(timeout=timeout)
            if finished is None:
                self.interrupt()
                self._read(timeout=60)  # the server reports the killed child: stay in step
                return None, ""
        finally:
            self.child = None
        return int(str(finished["rc"])), str(finished.get("origin", ""))

    def interrupt(self) -> None:
        """End the running test process and everything it started."""
        child = self.child
        if child is not None:
            with suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)  # the child leads its own process group

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Worker:
    """A private copy of the repository parts the tests need, with its own environment."""

    def __init__(self, root: Path, base: Path, modules: Sequence[str], *, fork: bool) -> None:
        self.root = root
        self.src = root / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
        shutil.copytree(base / "src", self.src, ignore=ignore)
        shutil.copytree(base / "tests", root / "tests", ignore=ignore)
        shutil.copytree(base / "examples", root / "examples", ignore=ignore)  # seeded data
        shutil.copy2(base / "pyproject.toml", root / "pyproject.toml")
        # compiled once so every run does not compile the whole package; the modules under
        # test get no bytecode, so a mutant is always read from its source
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(self.src)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for module in modules:
            self._drop_bytecode(module)
        self.env = _child_env(self.src, base)
        self._check_import()
        self.server = _ForkServer(root, self.env) if fork else None
        self.process: subprocess.Popen[str] | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def interrupt(self) -> None:
        if self.server is not None:
            self.server.interrupt()
        process = self.process
        if process is not None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def module_path(self, module: str) -> Path:
        return self.src / PACKAGE / module

    def _drop_bytecode(self, module: str) -> None:
        path = self.module_path(module)
        for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            cached.unlink()

    def _from_copy(self, origin: str) -> bool:
        return bool(origin) and Path(origin).resolve().is_relative_to(self.src.resolve())

    def _check_import(self) -> None:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            raise SystemExit(f"the copied package does not import:\n{probe.stderr[-3000:]}")
        if not self._from_copy(probe.stdout.strip()):
            raise SystemExit(
                f"tests would import {probe.stdout.strip()}, not the copy in {self.src}"
            )

    def run_tests(self, tests: Sequence[str], timeout: float) -> tuple[str, float, str]:
        started = time.monotonic()
        if self.server is None:
            code, output = self._run_process(tests, timeout)
            origin = str(self.src / PACKAGE / "__init__.py")  # checked once, in _check_import
        else:
            log = self.root / "pytest.log"
            code, origin = self.server.run([*PYTEST_ARGS, *tests], log, timeout)
            output = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        seconds = time.monotonic() - started
        tail = "\n".join(output.strip().splitlines()[-15:])
        if code is None:
            return "timeout", seconds, tail
        if code == 0:
            if not self._from_copy(origin):  # a pass proves nothing about another copy
                return "error", seconds, f"the tests imported {PACKAGE} from {origin!r}"
            return "survived", seconds, tail
        if code == NO_TESTS_COLLECTED:
            return "error", seconds, tail
        return "killed", seconds, tail

    def _run_process(self, tests: Sequence[str], timeout: float) -> tuple[int | None, str]:
        with subprocess.Popen(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends every child
        ) as process:
            self.process = process
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return None, ""
            finally:
                self.process = None
        return process.returncode, output

    def run_mutant(self, mutant: Mutant, tests: Sequence[str], timeout: float) -> Outcome:
        path = self.module_path(mutant.module)
        original = path.read_bytes()
        try:
            path.write_text(mutant.source, encoding="utf-8")
            self._drop_bytecode(mutant.module)
            status, seconds, detail = self.run_tests(tests, timeout)
        finally:
            path.write_bytes(original)
        return Outcome(mutant, status, seconds, detail)


def _child_env(src: Path, base: Path) -> dict[str, str]:
    # coverage's subprocess patch must not follow the test runs (they would measure the copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "COV_CORE_"))}
    env["PYTHONPATH"] = str(src)  # before the editable install's path entry
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    vectors = base.parent / "shared" / "vectors" / "attestation"
    if "CLEANROOM_VECTORS" not in env and vectors.is_dir():
        env["CLEANROOM_VECTORS"] = str(vectors)
    return env


@contextmanager
def _workers(
    count: int, modules: Sequence[str], base: Path, *, fork: bool
) -> Iterator[list[Worker]]:
    with tempfile.TemporaryDirectory(prefix="cleanroom-mutation-") as scratch:
        made: list[Worker] = []
        try:
            for n in range(count):  # one by one, so a failure closes the ones made
                made.append(Worker(Path(scratch) / f"w{n}", base, modules, fork=fork))  # noqa: PERF401
            yield made
        finally:
            for worker in made:
                worker.close()


@dataclass
class ModuleReport:
    target: Target
    mutants: int = 0
    equivalent: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    baseline_s: float = 0.0
    wall_s: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(1 for o in self.outcomes if o.status in statuses)

    @property
    def scored(self) -> int:
        return self.mutants - self.equivalent

    @property
    def score(self) -> float:
        killed = self.count("killed", "timeout")
        return 100.0 if self.scored == 0 else 100.0 * killed / self.scored

    @property
    def passed(self) -> bool:
        return self.score >= self.target.threshold and not self.count("error")


def _run_module(
    target: Target,
    chosen: list[Mutant],
    equivalent_count: int,
    workers: list[Worker],
    *,
    verbose: bool,
) -> ModuleReport:
    report = ModuleReport(target, mutants=len(chosen) + equivalent_count)
    report.equivalent = equivalent_count
    started = time.monotonic()
    # (1) the tests pass on the unmutated module, or no mutant means anything
    status, report.baseline_s, detail = workers[0].run_tests(target.tests, timeout=1800)
    if status != "survived":
        raise SystemExit(f"{target.module}: its tests fail without any mutant:\n{detail}")
    timeout = 2 * report.baseline_s + 20
    pool: Queue[Worker] = Queue()
    for worker in workers:
        pool.put(worker)
    lock = threading.Lock()
    stop = threading.Event()

    def one(mutant: Mutant) -> Outcome:
        worker = pool.get()
        try:
            if stop.is_set():
                return Outcome(mutant, "error", 0.0, "interrupted")
            outcome = worker.run_mutant(mutant, target.tests, timeout)
        finally:
            pool.put(worker)
        if verbose:
            with lock:
                _out(f"  {outcome.status:8} {outcome.seconds:6.1f}s  {mutant.id}")
        return outcome

    threads = ThreadPoolExecutor(max_workers=len(workers))
    try:  # (2) every mutant
        futures = [threads.submit(one, mutant) for mutant in chosen]
        report.outcomes = [future.result() for future in futures]
    except KeyboardInterrupt:
        stop.set()
        for worker in workers:
            worker.interrupt()
        raise
    finally:
        threads.shutdown(wait=True, cancel_futures=True)
    report.wall_s = time.monotonic() - started
    return report


def _sample(
    targets: Sequence[Target], candidates: dict[str, list[Mutant]], total: int, seed: int
) -> dict[str, list[Mutant]]:
    """A seeded sample of about ``total`` mutants, shared out by module size (two at least)."""
    rng = random.Random(seed)
    everything = sum(len(candidates[t.module]) for t in targets) or 1
    chosen = {}
    for t in targets:
        pool = candidates[t.module]
        share = max(2, math.ceil(total * len(pool) / everything))
        chosen[t.module] = sorted(
            rng.sample(pool, min(share, len(pool))), key=lambda m: (m.line, m.col)
        )
    return chosen


def _table(reports: Sequence[ModuleReport], wall_s: float) -> str:
    header = (
        f"{'module':24} {'mutants':>7} {'killed':>6} {'timeout':>7} {'equiv':>5} "
        f"{'survived':>8} {'error':>5} {'score':>7} {'min':>5} {'time':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        mark = "" if r.passed else "  << below threshold"
        lines.append(
            f"{r.target.module:24} {r.mutants:7} {r.count('killed'):6} {r.count('timeout'):7} "
            f"{r.equivalent:5} {r.count('survived'):8} {r.count('error'):5} "
            f"{r.score:6.1f}% {r.target.threshold:4.0f}% {r.wall_s:7.1f}s{mark}"
        )
    lines.append("-" * len(header))
    lines.append(f"total run time {wall_s:.1f} s")
    return "\n".join(lines)


def _targets(args: argparse.Namespace) -> list[Target]:
    targets = load_config(Path(args.config))
    if args.module:
        unknown = set(args.module) - {t.module for t in targets}
        if unknown:
            raise SystemExit(f"not in {args.config}: {', '.join(sorted(unknown))}")
        targets = [t for t in targets if t.module in args.module]
    return targets


def _stale(equivalents: dict[str, str], every: dict[str, list[Mutant]]) -> list[str]:
    """Listed ids of the modules run that name no mutant (their line moved: update them)."""
    known = {m.id for ms in every.values() for m in ms}
    return sorted(i for i in equivalents if i not in known and i.split(":")[0] in every)


def _show(outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        if o.status in ("survived", "error"):
            m = o.mutant
            _out(f"\n{o.status.upper()} {m.id}\n    {m.context}\n    {m.before}  ->  {m.after}")
            if o.status == "error":
                _out(o.detail)


def run(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    base = Path(args.root).resolve()
    targets = _targets(args)
    equivalents = load_equivalents()
    started = time.monotonic()
    every = {
        t.module: mutants_of(t.module, (base / "src" / PACKAGE / t.module).read_text("utf-8"))
        for t in targets
    }
    stale = [] if args.only else _stale(equivalents, every)
    for mutant_id in stale:
        _out(f"stale entry in {EQUIVALENTS.name} (no such mutant): {mutant_id}")
    if args.list:
        for m in (m for ms in every.values() for m in ms):
            flag = "  [equivalent]" if m.id in equivalents else ""
            _out(f"{m.id}{flag}\n    {m.context}\n    {m.before}  ->  {m.after}")
        return 0
    for t in targets:
        missing = [test for test in t.tests if not (base / test).is_file()]
        if missing:
            raise SystemExit(f"{t.module}: missing test files {missing}")
    candidates = {k: [m for m in v if m.id not in equivalents] for k, v in every.items()}
    if args.only:
        candidates = {k: [m for m in v if m.id in args.only] for k, v in candidates.items()}
        targets = [t for t in targets if candidates[t.module]]
    chosen = _sample(targets, candidates, args.sample, args.seed) if args.sample else candidates
    partial = bool(args.sample or args.only)  # equivalents count only in a full run
    reports = []
    with _workers(args.workers, [t.module for t in targets], base, fork=not args.no_fork) as w:
        for t in targets:
            listed = 0 if partial else len(every[t.module]) - len(candidates[t.module])
            _out(f"{t.module}: {len(chosen[t.module])} mutants ({', '.join(t.tests)})")
            reports.append(_run_module(t, chosen[t.module], listed, w, verbose=args.verbose))
    for r in reports:
        _show(r.outcomes)
    _out()
    _out(_table(reports, time.monotonic() - started))
    failed = [r.target.module for r in reports if not r.passed]
    if stale and not partial:
        _out(f"{len(stale)} stale entries in {EQUIVALENTS.name}: update their ids")
        return 1
    if failed:
        _out(f"below threshold: {', '.join(failed)}")
        return 1
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.runner", description=__doc__)
    parser.add_argument("--module", action="append", help="only this module (repeatable)")
    parser.add_argument("--only", action="append", help="only this mutant id (repeatable)")
    parser.add_argument("--sample", type=int, default=0, help="run a seeded sample of N mutants")
    parser.add_argument("--seed", type=int, default=20261126, help="the sample's seed")
    parser.add_argument("--workers", type=int, default=2, help="test processes at once")
    parser.add_argument(
        "--no-fork", action="store_true", help="a fresh interpreter per mutant (slower)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per mutant")
    parser.add_argument("--root", default=str(ROOT), help="the repository to copy")
    parser.add_argument("--config", default=str(CONFIG), help="modules, tests and thresholds")
    return parser.parse_args(argv)


def main() -> int:
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # ended like Ctrl-C: no test process left behind
    try:
        return run()
    except KeyboardInterrupt:
        _out("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
