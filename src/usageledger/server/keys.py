"""Where ``usageledger serve`` takes its API keys from without putting them on the command
line (every local user can read a process's arguments in ``/proc/<pid>/cmdline`` and
``ps``): a key file, or the ``USAGELEDGER_SERVER_API_KEYS`` environment variable."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["read_key_file", "keys_from_env", "API_KEYS_ENV"]

log = logging.getLogger("usageledger.server")

#: comma-separated bearer keys, read by ``serve`` when no keys are given
API_KEYS_ENV = "USAGELEDGER_SERVER_API_KEYS"


def read_key_file(path: str | os.PathLike[str]) -> list[str]:
    """The keys in ``path``: one per line; blank lines and lines starting with ``#`` are
    skipped. A file that others may read is used, with a warning naming it."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the API key file {p} is not UTF-8 text") from None
    keys = [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError(f"the API key file {p} holds no key (one key per line)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the API key file %s can be read by other users (mode %o): chmod 600 it",
                    p, stat.S_IMODE(mode))
    return keys


def keys_from_env(env: dict[str, str] | None = None) -> list[str]:
    value = (os.environ if env is None else env).get(API_KEYS_ENV, "")
    return [k.strip() for k in value.split(",") if k.strip()]
