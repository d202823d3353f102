"""The version matrix: what pyproject.toml claims is what CI tests (README, "Development").

``python3 tests/matrix.py`` (``.ci/run`` runs it after the full suite on Python 3.11):

1. the core suites (:data:`CORE_SUITES`) on Python 3.10, 3.12 and 3.13, each in a fresh
   virtualenv with the newest dependencies;
2. the core suites once on Python 3.11 with ``requests`` and ``urllib3`` pinned at exactly
   the minimums ``pyproject.toml`` declares (:func:`pyproject_floors`);
3. ``python -m build`` (sdist, then the wheel from the sdist), ``twine check`` and the
   wheel's own metadata (name, version, dependency floors, bundled server files);
4. the wheel installed into a fresh virtualenv, and the demo run from it
   (``python -m durable_streams demo``) outside the source tree.

The interpreters come from pyenv (``pyenv prefix 3.13.0``), or ``python3.X`` on ``PATH``.
Virtualenvs are made in a temporary directory (``--workdir`` to keep them). Every step
runs, each is timed, a summary is printed, and the exit code is 1 if any step failed.
``--only NAME`` runs one step (``py3.10``, ``py3.12``, ``py3.13``, ``floors``, ``build``).

The core suites are the server-free unit tests plus the integration files that cover the
public API end to end against the real reference server: streams, the producer, reads,
forks, the HTTP layer (retries, transport failures said in words, the environment,
redaction), subscriptions and webhooks, and the package itself. About a minute each on 2
cores; the full suite (faults, load, CLI, recipes, static checks) runs on 3.11 only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Meaningful and fast: see the module docstring.
CORE_SUITES: tuple[str, ...] = (
    "tests/unit",
    "tests/test_stream.py",
    "tests/test_producer.py",
    "tests/test_reading.py",
    "tests/test_fork.py",
    "tests/test_http_transport.py",
    "tests/test_http_retry.py",
    "tests/test_http_env.py",
    "tests/test_redaction.py",
    "tests/test_subscriptions.py",
    "tests/test_webhooks.py",
    "tests/test_package.py",
    "tests/test_cli_serve.py",
)
#: What the core suites need from the ``test`` extra (its floors are used as declared).
CORE_TEST_DEPS: tuple[str, ...] = ("pytest", "pytest-timeout", "hypothesis", "responses",
                                   "cryptography")
#: The core suites with the newest dependencies on each of these.
PYTHONS: tuple[str, ...] = ("3.10", "3.12", "3.13")
#: The dependency floors are tested on this one.
FLOORS_PYTHON = "3.11"
#: Messages the demo writes from the installed wheel.
DEMO_MESSAGES = 5000


# -- what pyproject.toml declares ---------------------------------------------------------
def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def _array(name: str) -> list[str]:
    """The strings of the TOML array ``name = [...]`` (a tiny reader: no tomllib on 3.10)."""
    match = re.search(rf"^{re.escape(name)}\s*=\s*\[(.*?)\]", _pyproject(), re.M | re.S)
    if match is None:
        raise SystemExit(f"pyproject.toml has no {name} = [...]")
    return re.findall(r'"([^"]+)"', match.group(1))


def pyproject_floors() -> dict[str, str]:
    """``{"requests": "2.32.2", "urllib3": "2.3"}``: the ``>=`` floor of each dependency."""
    floors: dict[str, str] = {}
    for spec in _array("dependencies"):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", spec.strip())
        if match is None:
            raise SystemExit(f"dependency {spec!r} has no plain >= floor to test")
        floors[match.group(1).lower()] = match.group(2)
    return floors


def pinned(version: str) -> str:
    """``2.3`` -> ``2.3.0``: the first release a floor admits."""
    parts = version.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


def core_test_requirements() -> list[str]:
    wanted = set(CORE_TEST_DEPS)
    specs = [s for s in _array("test") if re.split(r"[<>=!\[ ]", s, maxsplit=1)[0] in wanted]
    if len(specs) != len(wanted):
        raise SystemExit(f"the test extra lacks some of {sorted(wanted)}: {specs}")
    return specs


def project_version() -> str:
    text = (ROOT / "durable_streams" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    assert match, "durable_streams/_version.py has no __version__ literal"
    return match.group(1)


def distribution() -> str:
    match = re.search(r'^name = "([^"]+)"', _pyproject(), re.M)
    assert match
    return match.group(1)


# -- interpreters and virtualenvs -----------------------------------------------------------
def find_python(minor: str) -> str:
    """The newest ``minor.N`` interpreter pyenv has, else ``pythonMINOR`` on PATH."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        bare = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True)
        found = [v.strip() for v in bare.stdout.split()
                 if re.fullmatch(rf"{re.escape(minor)}\.\d+", v.strip())]
        if found:
            best = max(found, key=lambda v: int(v.rsplit(".", 1)[1]))
            prefix = subprocess.run([pyenv, "prefix", best], capture_output=True, text=True,
                                    check=True).stdout.strip()
            return str(Path(prefix) / "bin" / "python3")
    on_path = shutil.which(f"python{minor}")
    if on_path:
        return on_path
    raise SystemExit(f"no Python {minor}: install it (pyenv install {minor}) - the matrix "
                     "must test every version pyproject.toml claims")


def run(argv: Sequence[object], log: list[str], *, cwd: Path = ROOT, timeout: float = 900,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log.append("$ " + " ".join(str(a) for a in argv))
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env if env is not None else clean_env(),
                          stdin=subprocess.DEVNULL)
    log.append((proc.stdout + proc.stderr).rstrip()[-6000:])
    if proc.returncode != 0:
        raise StepFailed(f"exit code {proc.returncode}: {' '.join(map(str, argv[:6]))}")
    return proc


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DURABLE_STREAMS_URL"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def make_venv(python: str, where: Path, log: list[str]) -> Path:
    if where.exists():
        shutil.rmtree(where)
    run([python, "-m", "venv", where], log)
    return where / "bin" / "python"


def pip_install(py: Path, args: Sequence[object], log: list[str]) -> None:
    run([py, "-m", "pip", "install", "-q", *args], log)


class StepFailed(Exception):
    pass


@dataclass
class Step:
    name: str
    what: str
    log: list[str] = field(default_factory=list)
    ok: bool | None = None
    seconds: float = 0.0
    detail: str = ""


# -- the steps --------------------------------------------------------------------------------
def prepare_core(step: Step, minor: str, work: Path, *, floors: bool) -> Path:
    """A fresh virtualenv with this tree installed (editable) and the core test deps."""
    python = find_python(minor)
    py = make_venv(python, work / f"venv-{step.name}", step.log)
    extra: list[str] = []
    if floors:
        extra = [f"{name}=={pinned(v)}" for name, v in pyproject_floors().items()]
    pip_install(py, ["-e", str(ROOT), *core_test_requirements(), *extra], step.log)
    return py


def run_core(step: Step, py: Path, *, floors: bool) -> None:
    versions = run([py, "-c", "import platform, requests, urllib3; print("
                    "platform.python_version(), requests.__version__, urllib3.__version__)"],
                   step.log).stdout.split()
    step.detail = f"Python {versions[0]}, requests {versions[1]}, urllib3 {versions[2]}"
    if floors:
        want = [pinned(v) for v in pyproject_floors().values()]
        if versions[1:] != want:
            raise StepFailed(f"the floors are not what got installed: {versions[1:]} != {want}")
    proc = run([py, "-m", "pytest", "-q", *CORE_SUITES], step.log,
               timeout=900)
    summary = [line for line in proc.stdout.splitlines() if " passed" in line]
    step.detail += "; " + (summary[-1].strip("= ") if summary else "?")


def build_and_demo(step: Step, work: Path) -> None:
    log = step.log
    py = make_venv(find_python(FLOORS_PYTHON), work / "venv-build", log)
    pip_install(py, ["build", "twine"], log)
    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run([py, "-m", "build", "--outdir", dist, ROOT], log, timeout=600)
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise StepFailed(f"expected one wheel and one sdist, got {wheels + sdists}")
    run([py, "-m", "twine", "check", "--strict", *wheels, *sdists], log)
    check_wheel(wheels[0])
    # A fresh virtualenv with only the wheel; the demo runs outside the source tree so the
    # import can only come from the installed package.
    app = make_venv(find_python(FLOORS_PYTHON), work / "venv-wheel", log)
    pip_install(app, [str(wheels[0])], log)
    outside = work / "outside"
    outside.mkdir(exist_ok=True)
    where = run([app, "-c", "import durable_streams; print(durable_streams.__file__)"], log,
                cwd=outside).stdout.strip()
    if not where.startswith(str(work / "venv-wheel")):
        raise StepFailed(f"durable_streams was imported from {where}, not the wheel")
    version = run([app.parent / "durable-streams", "--version"], log, cwd=outside).stdout
    if version.strip() != f"durable-streams {project_version()} ({distribution()})":
        raise StepFailed(f"--version of the installed command says {version.strip()!r}")
    demo = run([app, "-m", "durable_streams", "demo", "-n", str(DEMO_MESSAGES)], log,
               cwd=outside, timeout=300)
    if "verified:" not in demo.stdout:
        raise StepFailed("the demo did not verify")
    step.detail = (f"{wheels[0].name}, {sdists[0].name}; twine check ok; demo of "
                   f"{DEMO_MESSAGES:,} messages verified from the installed wheel")


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta_name).decode()
    fields = [line.split(": ", 1) for line in metadata.splitlines() if ": " in line]
    get = {k: v for k, v in reversed(fields)}
    problems = []
    if get.get("Name") != distribution():
        problems.append(f"Name is {get.get('Name')!r}")
    if get.get("Version") != project_version():
        problems.append(f"Version is {get.get('Version')!r}, _version.py says "
                        f"{project_version()}")
    requires = {v for k, v in fields if k == "Requires-Dist" and "extra ==" not in v}
    for name, floor in pyproject_floors().items():
        if f"{name}>={floor}" not in requires:
            problems.append(f"Requires-Dist lacks {name}>={floor}: {sorted(requires)}")
    for needed in ("durable_streams/py.typed", "durable_streams/_server/package.json",
                   "durable_streams/_server/package-lock.json",
                   "durable_streams/_server/start.mjs", "durable_streams/cli/_serve.py"):
        if needed not in names:
            problems.append(f"the wheel lacks {needed}")
    if any(n.startswith("tests/") for n in names):
        problems.append("the wheel ships tests/")
    if problems:
        raise StepFailed("; ".join(problems))


# -- driver -------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run one step: py3.10, py3.12, py3.13, floors, build")
    parser.add_argument("--workdir", type=Path, help="keep virtualenvs and dist/ here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    core = [Step(f"py{m}", f"core suites, Python {m}, newest dependencies") for m in PYTHONS]
    floors = Step("floors", f"core suites, Python {FLOORS_PYTHON}, " + ", ".join(
        f"{n}=={pinned(v)}" for n, v in pyproject_floors().items()))
    build = Step("build", "sdist + wheel, twine check, wheel installed, demo from it")
    steps = [*core, floors, build]
    if args.only:
        steps = [s for s in steps if s.name == args.only]
        if not steps:
            parser.error(f"no step {args.only!r}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ds-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # Installing is mostly waiting on the network and disk: prepare the virtualenvs of
        # the test steps side by side, then run the suites one at a time (2 cores).
        test_steps = [s for s in steps if s.name != "build"]
        ready: dict[str, Path] = {}
        prepare_started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                pool.submit(prepare_core, s, FLOORS_PYTHON if s is floors else s.name[2:],
                            work, floors=s is floors): s
                for s in test_steps
            }
            for future, s in futures.items():
                try:
                    ready[s.name] = future.result()
                except (StepFailed, subprocess.TimeoutExpired, SystemExit) as exc:
                    s.ok, s.detail = False, f"install failed: {exc}"
        prepare_s = time.monotonic() - prepare_started
        print(f"matrix: virtualenvs prepared in {prepare_s:.0f} s", flush=True)
        for s in steps:
            if s.ok is False:
                continue
            t0 = time.monotonic()
            try:
                if s is build:
                    build_and_demo(s, work)
                else:
                    run_core(s, ready[s.name], floors=s is floors)
                s.ok = True
            except (StepFailed, subprocess.TimeoutExpired, SystemExit) as exc:
                s.ok = False
                s.detail = f"{s.detail}; FAILED: {exc}".lstrip("; ")
            s.seconds = time.monotonic() - t0
            print(f"matrix: {s.name:<7} {'ok' if s.ok else 'FAILED'} in {s.seconds:.0f} s: "
                  f"{s.detail}", flush=True)
            if not s.ok:
                print("\n".join(s.log[-6:]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    failed = [s for s in steps if not s.ok]
    print()
    for s in steps:
        print(f"  {'ok    ' if s.ok else 'FAILED'} {s.name:<7} {s.seconds:5.0f} s  {s.what}")
    print(f"matrix: {len(steps) - len(failed)} of {len(steps)} steps ok in {total:.0f} s "
          f"(virtualenvs prepared in {prepare_s:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
