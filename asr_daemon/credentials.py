"""Where secrets come from: the config or environment, a file named in the config, or a systemd credential
(``LoadCredential=NAME:...`` makes ``$CREDENTIALS_DIRECTORY/NAME``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr


class CredentialFileError(ValueError):
    """A secret file named in the config cannot be read."""


def read_secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialFileError(f"cannot read it ({exc.strerror or exc})") from None


def resolve_secret(value: SecretStr | None, file: str | None, credential: str) -> SecretStr | None:
    """``value`` if set, else the content of ``file``, else the systemd credential ``credential`` if present."""
    if value is not None:
        return value
    if file:
        return SecretStr(read_secret_file(Path(file)))
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (path := Path(directory) / credential).is_file():
        return SecretStr(read_secret_file(path))
    return None
