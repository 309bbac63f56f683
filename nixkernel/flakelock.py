"""A flake's locked inputs, and which of them are missing from the Nix store: without running
Nix, so ``doctor`` can say which would need the network before anything is evaluated.

Each input in ``flake.lock`` carries its ``narHash``; Nix stores it as the fixed-output path
``makeFixedOutputPath(recursive, narHash, "source")`` (``src/libstore/store-api.cc``: the path
hash is ``compressHash(sha256("source:sha256:<hex>:<store dir>:source"), 20)`` in Nix's
base-32), so whether it is there is one ``stat``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import NamedTuple

_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
#: Input types fetched from the local machine: Nix can copy them without the network.
LOCAL_TYPES = frozenset({"path"})


class LockedInput(NamedTuple):
    name: str
    """The node's name in flake.lock (``nixpkgs``, ``flake-utils``...)."""
    reference: str
    """Where it comes from, as a flake reference (``github:NixOS/nixpkgs/<rev>``)."""
    store_path: str | None
    """Where Nix keeps it, or None when flake.lock has no narHash for it."""
    local: bool
    """Fetched from this machine (a path, or a git repository on a local file path)."""


def nix_base32(data: bytes) -> str:
    """Nix's base-32 encoding (``src/libutil/hash.cc``: least significant bits first)."""
    length = (len(data) * 8 - 1) // 5 + 1
    chars = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        chars.append(_BASE32[c & 0x1F])
    return "".join(chars)


def source_store_path(nar_hash: str, store_dir: str | None = None, name: str = "source") -> str:
    """The store path of a source tree with NAR hash ``nar_hash`` (SRI ``sha256-...``)."""
    store_dir = store_dir or os.environ.get("NIX_STORE_DIR") or "/nix/store"
    algorithm, _, encoded = nar_hash.partition("-")
    if algorithm != "sha256" or not encoded:
        raise ValueError(f"not a sha256 SRI hash: {nar_hash!r}")
    digest = base64.b64decode(encoded).hex()
    inner = hashlib.sha256(f"source:sha256:{digest}:{store_dir}:{name}".encode()).digest()
    compressed = bytearray(20)
    for i, byte in enumerate(inner):
        compressed[i % 20] ^= byte
    return f"{store_dir}/{nix_base32(bytes(compressed))}-{name}"


def _reference(locked: dict) -> str:
    kind = locked.get("type", "?")
    if kind in ("github", "gitlab", "sourcehut"):
        ref = f"{kind}:{locked.get('owner')}/{locked.get('repo')}"
        return ref + (f"/{locked['rev']}" if locked.get("rev") else "")
    if kind in ("git", "hg", "tarball", "file"):
        url = str(locked.get("url", ""))
        ref = f"{kind}+{url}" if kind in ("git", "hg") and "+" not in url else url
        return ref + (f"?rev={locked['rev']}" if locked.get("rev") else "")
    if kind == "path":
        return f"path:{locked.get('path')}"
    return f"{kind}:{json.dumps(locked, sort_keys=True)}"


def _is_local(locked: dict) -> bool:
    if locked.get("type") in LOCAL_TYPES:
        return True
    url = str(locked.get("url", ""))
    return locked.get("type") in ("git", "hg") and (url.startswith("file:") or url.startswith("/"))


def locked_inputs(project: str) -> list[LockedInput]:
    """The inputs ``project/flake.lock`` pins (empty without one); raises ValueError if the
    file is not a lock file nixkernel can read."""
    try:
        with open(os.path.join(project, "flake.lock"), encoding="utf-8") as f:
            lock = json.load(f)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    nodes = lock.get("nodes") if isinstance(lock, dict) else None
    if not isinstance(nodes, dict):
        raise ValueError("no 'nodes' object")
    root = lock.get("root", "root")
    inputs = []
    for name, node in sorted(nodes.items()):
        locked = node.get("locked") if isinstance(node, dict) else None
        if name == root or not isinstance(locked, dict):
            continue
        nar_hash = locked.get("narHash")
        path = source_store_path(nar_hash) if isinstance(nar_hash, str) else None
        inputs.append(LockedInput(name, _reference(locked), path, _is_local(locked)))
    return inputs


def missing_inputs(project: str) -> list[LockedInput]:
    """Locked inputs that are not in the store and not on this machine: the first evaluation
    would download them."""
    return [
        i
        for i in locked_inputs(project)
        if not i.local and (i.store_path is None or not os.path.exists(i.store_path))
    ]
