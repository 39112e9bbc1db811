"""The mesh's generated secrets: where they live, how roles get them, how they stay hidden.

Three secrets, each 256 random bits (docs/security.md):

- `redis_password`: the embedded Valkey's password (`requirepass`);
- `service_token`: the bearer token the memory and cognition services require;
- `mesh_key`: the HMAC key that signs envelopes when `security.sign_envelopes` is on.

They are made once, at the first `agentmesh up` (or the first role or command that
needs them), into `<state folder>/secrets.json`, mode 0600 in a folder of mode 0700,
so another local user can read none of them. `up` hands them to supervisord in its
environment, and every program inherits them from there: no rendered config holds one.
A command run by hand (status, consensus propose, ...) reads the same file.

`AGENTMESH_REDIS_PASSWORD`, `AGENTMESH_SERVICE_TOKEN` and `AGENTMESH_MESH_KEY` override
the file: that is how the hosts of a mesh spread over several machines share secrets
(copy the file, or set the variables on each host).

The file sits in the mesh's top state folder, not a host's sub-folder, so hosts that
share one folder share one set of secrets.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.errors import ConfigError

SECRETS_FILE = "secrets.json"
SECRET_BYTES = 32


@dataclass(frozen=True)
class Credentials:
    redis_password: str = ""
    service_token: str = ""
    mesh_key: str = ""

    def __repr__(self) -> str:  # never print a secret by accident (a log line, a traceback)
        present = [f.name for f in fields(self) if getattr(self, f.name)]
        return f"Credentials({', '.join(present) or 'none'})"

    __str__ = __repr__

    def environment(self) -> dict[str, str]:
        """The variables that hand these secrets to a child process."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {environment.SECRETS[name]: value for name, value in values.items() if value}


def secrets_path(root: Path) -> Path:
    """Where the mesh whose mesh.yaml is in `root` keeps its secrets."""
    return root / C.STATE_DIR / SECRETS_FILE


def private_dir(path: Path) -> None:
    """Make folder `path` (and its parents) and let only its owner in (mode 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def _new() -> dict[str, str]:
    return {f.name: secrets.token_urlsafe(SECRET_BYTES) for f in fields(Credentials)}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the mesh's secrets from {path}: {exc}; "
                          "delete the file to make new ones (then restart the mesh)") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; delete it to make new secrets")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # somebody widened it: narrow it again rather than go on with readable secrets
        path.chmod(0o600)
    return data


def _publish(path: Path, data: dict[str, str], replace: bool) -> bool:
    """Put `data` at `path` whole, mode 0600 from the first byte: written to a temporary
    file beside it, then linked in (False if `path` exists already) or, with `replace`,
    renamed over it. A racing reader sees no file or a complete one, never a half-written one."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write the mesh's secrets to {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def ensure_secrets(root: Path) -> Path:
    """Make the secrets file if there is none yet (safe when several processes race:
    the first one publishes it, the others read it), and add any secret it lacks (an older
    or hand-edited file keeps what it has). Returns its path."""
    path = secrets_path(root)
    private_dir(path.parent)
    if not path.exists() and _publish(path, _new(), replace=False):
        return path
    data = _read(path)
    missing = [name for name in environment.SECRETS if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        fresh = _new()
        _publish(path, {**data, **{name: fresh[name] for name in missing}}, replace=True)
    return path


def load_credentials(root: Path, create: bool = True,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """The mesh's secrets: each from its environment variable when set, else the file
    (made first when `create` and there is none)."""
    from_env = environment.secret_overrides(environ)
    data: dict[str, Any] = {}
    if not all(from_env.values()):
        path = ensure_secrets(root) if create else secrets_path(root)
        data = _read(path)
    values = {name: from_env[name] or str(data.get(name) or "") for name in environment.SECRETS}
    return Credentials(**values)
