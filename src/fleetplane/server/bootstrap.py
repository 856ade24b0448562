"""First start: the default tenant, the system admin key, and the CLI's config file."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import yaml

from fleetplane.core.errors import ApiError
from fleetplane.core.store import Store
from fleetplane.kinds import ACCESS_KEY, TENANT
from fleetplane.server.auth import mint_key

DEFAULT_TENANT = "default"
ADMIN_KEY_NAME = "system-admin"
log = logging.getLogger(__name__)


def default_client_config() -> Path:
    env = os.environ.get("FLEETPLANE_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "fleetplane" / "config.yaml"


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def ensure_admin(store: Store, data_dir: Path) -> Path:
    """Create the default tenant and the system admin key once; the key lives only in a
    file readable by its owner (and as a hash in the store)."""
    key_file = data_dir / "admin.key"
    if store.get_or_none("", TENANT.kind, "", DEFAULT_TENANT) is None:
        try:
            store.create("", TENANT.normalize({"metadata": {"name": DEFAULT_TENANT}, "spec": {}}))
        except ApiError as exc:
            if exc.code != 409:  # 409: another replica created it first
                raise
    existing = store.get_or_none(DEFAULT_TENANT, ACCESS_KEY.kind, "", ADMIN_KEY_NAME)
    if existing is not None and key_file.exists():
        return key_file
    # Replicas share one store but each has its own data dir. When the first system key
    # exists already (another replica made it, or this dir's key file was lost), mint this
    # data dir a key of its own: rotating the shared one would lock out everyone using it.
    name = ADMIN_KEY_NAME if existing is None else f"{ADMIN_KEY_NAME}-{secrets.token_hex(4)}"
    while True:
        secret, digest = mint_key(DEFAULT_TENANT, name)
        key = ACCESS_KEY.normalize(
            {
                "metadata": {"name": name},
                "spec": {"role": "admin", "system": True, "description": f"created at start of {data_dir}"},
            }
        )
        key["status"] = {"keyHash": digest}
        try:
            store.create(DEFAULT_TENANT, key)
        except ApiError as exc:
            if exc.code != 409:
                raise
            name = f"{ADMIN_KEY_NAME}-{secrets.token_hex(4)}"  # another replica's first start won the race
            continue
        break
    if name != ADMIN_KEY_NAME:
        log.warning("the system admin key exists already; minted system key %r for %s", name, key_file)
    write_private(key_file, secret + "\n")
    return key_file


def write_client_config(
    path: Path, server_url: str, key_file: Path, ca_file: Path | None, data_dir: Path
) -> None:
    """Point the CLI at this server, unless the file belongs to another data directory."""
    if path.exists():
        try:
            current = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            current = {}
        if current.get("dataDir") not in (None, str(data_dir)):
            log.info("not touching %s: it belongs to %s", path, current.get("dataDir"))
            return
    config = {"server": server_url, "keyFile": str(key_file), "dataDir": str(data_dir)}
    if ca_file is not None:
        config["caFile"] = str(ca_file)
    write_private(path, yaml.safe_dump(config, sort_keys=False))
