"""Another local user, for the security tests: user `nobody` through `setpriv`, with a
Python it can run wherever this clone lives.

The clone's .venv may sit under a private home (a folder of mode 0700, as a new user's
home is): nobody cannot read it, so it cannot run the venv's Python or import what is
installed there. `python_for_nobody` copies the packages a test needs into a fresh
world-readable folder and finds an interpreter of the same version that nobody can run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
AS_ROOT = os.geteuid() == 0
# where a Python of this version may live outside a private folder (the venv's own base
# first, for machines whose interpreter is installed system-wide)
_PLACES = ("{base}/bin/python{v}", "/usr/local/bin/python{v}", "/usr/bin/python{v}")


def as_nobody(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` as user nobody (no groups), from a folder nobody may enter."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           *command], capture_output=True, text=True, timeout=60, cwd="/",
                          env=env if env is not None else {"PATH": "/usr/bin:/bin"})


def _readable_by_all(root: Path) -> None:
    """Folders 0755, files 0644 (0755 when executable): whatever the umask they were made under."""
    for folder, _subfolders, files in os.walk(root):
        Path(folder).chmod(0o755)
        for name in files:
            path = Path(folder) / name
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)


def _package_dirs(name: str) -> list[Path]:
    """The installed folder of package `name`, and its vendored libraries (`<name>.libs`,
    where auditwheel puts the shared objects a binary wheel brings)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise AssertionError(f"package {name} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    libs = folder.with_name(f"{name}.libs")
    return [folder, libs] if libs.is_dir() else [folder]


def _interpreter() -> str:
    """A Python of this one's major.minor (compiled packages must match) that nobody can run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for place in _PLACES:
        candidate = place.format(base=sys.base_prefix, v=version)
        if not Path(candidate).exists():
            continue
        answer = as_nobody(candidate, "-c", "import sys; print(sys.version_info[:2])")
        if answer.returncode == 0 and answer.stdout.strip() == str(sys.version_info[:2]):
            return candidate
        tried.append(f"{candidate}: {(answer.stderr or answer.stdout).strip()[:120]}")
    raise AssertionError(f"no Python {version} that user nobody can run (tried: {tried or _PLACES})")


@contextmanager
def python_for_nobody(*packages: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(command prefix, environment) to run Python as nobody with `packages` importable."""
    folder = Path(tempfile.mkdtemp(prefix="agentmesh-nobody-"))
    try:
        for name in packages:
            for source in _package_dirs(name):
                shutil.copytree(source, folder / source.name,
                                ignore=shutil.ignore_patterns("__pycache__"))
        _readable_by_all(folder)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
        yield [_interpreter(), "-s"], env
    finally:
        shutil.rmtree(folder, ignore_errors=True)
