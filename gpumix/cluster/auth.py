"""The cluster token: Ray 2.60's token authentication, on by default for every cluster gpumix starts.

Ray checks a bearer token on its gRPC and HTTP ports when ``RAY_AUTH_MODE=token``; each process reads the
token from ``RAY_AUTH_TOKEN`` (env), else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``
(ray/_private/authentication/authentication_token_setup.py, ray 2.60.0). gpumix keeps the token in its own
file, created with mode 0600 in a 0700 directory under the user's config dir (Ray's own generator writes
~/.ray/auth_token with the default umask), and hands Ray the path, never the token on a command line.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from gpumix.errors import GpumixError

ENV_CONFIG_DIR = "GPUMIX_CONFIG_DIR"
TOKEN_FILE_NAME = "ray-token"
TOKEN_BYTES = 32  # 256 bits, as Ray's own generator (secrets.token_hex(32))
# Ray's variables; a stray RAY_AUTH_TOKEN in the caller's environment would override the file, so it is dropped.
RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def config_dir() -> Path:
    """$GPUMIX_CONFIG_DIR, else $XDG_CONFIG_HOME/gpumix, else ~/.config/gpumix."""
    if os.environ.get(ENV_CONFIG_DIR):
        return Path(os.environ[ENV_CONFIG_DIR])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpumix"


def default_token_file() -> Path:
    return config_dir() / TOKEN_FILE_NAME


def ensure_token(path: Path) -> Path:
    """The token file at `path`, created (0600, random 256-bit hex) if missing; checked if present."""
    if path.exists():
        return check_token_file(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another gpumix: use that one
        return check_token_file(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(TOKEN_BYTES))
    return path


def check_token_file(path: Path) -> Path:
    """The token file must exist, be ours, be readable by us only, and hold a token."""
    if not path.is_file():
        raise GpumixError(
            f"no cluster token at {path}",
            hint="copy the token file that `gpumix cluster head` printed to this path (then `chmod 600` it), "
            "or pass --token-file",
        )
    info = path.stat()
    if info.st_uid != os.getuid():
        raise GpumixError(f"cluster token {path} belongs to another user (uid {info.st_uid})", hint="use a token file you own")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise GpumixError(
            f"cluster token {path} is readable by others (mode {mode:04o})", hint=f"run `chmod 600 {path}`"
        )
    if not path.read_text().strip():
        raise GpumixError(f"cluster token {path} is empty", hint="copy the head's token file again")
    return path


def auth_env(token_file: Path | None) -> dict[str, str]:
    """Environment for every Ray process and client of a cluster: token mode with the file, or (None) disabled."""
    if token_file is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def with_auth(env: dict[str, str], token_file: Path | None) -> dict[str, str]:
    """`env` without any Ray auth variable of the caller's, plus gpumix's."""
    return {k: v for k, v in env.items() if k not in RAY_AUTH_VARS} | auth_env(token_file)
