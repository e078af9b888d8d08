"""Who the Kaggle user is, and every credential that must never leave this machine in a bundle or kernel.

kaggle 2.x logs in first with an access token (``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``, or
``kaggle auth login``, which saves ``credentials.json``); the legacy ``kaggle.json`` and
``KAGGLE_USERNAME`` + ``KAGGLE_KEY`` still work. ``kaggle_username`` finds the user under any of them (a
token names no user: the client is asked), and ``scan_for_credentials`` refuses a folder holding any of them.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from landmark_kaggle.errors import UserError


class KernelError(UserError):
    """Metadata or a bundle that Kaggle would reject or that would leak a credential."""


def kaggle_config_file() -> Path:
    """Where the kaggle client looks for kaggle.json (its own search order)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    legacy = Path.home() / ".kaggle"
    if legacy.exists():
        return legacy / "kaggle.json"
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "kaggle" / "kaggle.json"


def _config_values() -> dict:
    path = kaggle_config_file()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KernelError(f"{path}: not valid JSON (line {exc.lineno})") from None


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def oauth_values() -> dict:
    """What ``kaggle auth login`` keeps (kagglesdk ``KaggleCredentials``: ~/.kaggle/credentials.json)."""
    try:
        values = json.loads((Path.home() / ".kaggle" / "credentials.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def access_tokens() -> list[str]:
    """The access tokens kaggle 2.x logs in with, where kagglesdk looks (``get_access_token_from_env``):
    ``KAGGLE_API_TOKEN`` (the token, or a file holding it), ``~/.kaggle/access_token`` (or ``.txt``)."""
    tokens = []
    env = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if env:
        tokens.append(_read_token(Path(env)) if Path(env).is_file() else env)
    for name in ("access_token", "access_token.txt"):
        tokens.append(_read_token(Path.home() / ".kaggle" / name))
    return [t for t in tokens if t]


def kaggle_username(explicit: str | None = None, ask_client=None) -> str:
    """The Kaggle user: ``--user``, ``KAGGLE_USERNAME``, kaggle.json's ``username``, the name ``kaggle auth
    login`` saved, else (a token login, which keeps no name on disk) what ``ask_client()`` answers, the name
    the kaggle client got for the token."""
    user = (explicit or os.environ.get("KAGGLE_USERNAME") or _config_values().get("username")
            or oauth_values().get("username"))
    if not user and ask_client is not None and access_tokens():
        user = ask_client()
    if not user:
        how = ("the kaggle client found no user for your access token (expired? check `kaggle config view`)"
               if access_tokens() else f"no KAGGLE_USERNAME, no {kaggle_config_file()} and no access token")
        raise KernelError(f"no Kaggle user name: {how}; pass --user NAME")
    if "/" in user or not user.strip():
        raise KernelError(f"Kaggle user name {user!r} is not valid")
    return user


def credential_values() -> list[str]:
    """The secrets nothing we upload may contain: the legacy key (environment, kaggle.json), every access token
    and what ``kaggle auth login`` keeps."""
    oauth = oauth_values()
    values = [os.environ.get("KAGGLE_KEY", ""), _config_values().get("key", ""), *access_tokens(),
              str(oauth.get("refresh_token") or ""), str(oauth.get("access_token") or "")]
    return [v for v in values if v and len(v) >= 8]


def scan_for_credentials(folder: Path) -> None:
    """Refuse a bundle or rendered kernel in which any file (or wheel member) contains a credential."""
    secrets = [s.encode() for s in credential_values()]
    if not secrets:
        return
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        blobs = [(str(path), path.read_bytes())]
        if path.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(path) as zf:
                blobs += [(f"{path}!{n}", zf.read(n)) for n in zf.namelist()]
        for where, data in blobs:
            if any(s in data for s in secrets):
                raise KernelError(f"{where} contains your Kaggle API key or access token; remove it before uploading")
