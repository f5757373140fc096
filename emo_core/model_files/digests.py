"""File digests: SHA-256, and the git blob hash the Hugging Face hub gives as the ETag of a small (non-LFS) file."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file: sha1 of b"blob <size>\\0" + bytes (the hub's ETag of non-LFS files)."""
    digest = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_digest_kind(etag: str | None) -> str | None:
    """What a hub ETag is a digest of: "sha256" (LFS file), "git-sha1" (small file), None (unknown form)."""
    if etag and SHA256_RE.match(etag):
        return "sha256"
    if etag and GIT_SHA1_RE.match(etag):
        return "git-sha1"
    return None


def matches_hub_etag(path: str | os.PathLike, etag: str | None) -> bool | None:
    """Whether the file's bytes give the hub's ETag; None when the ETag is no digest we know."""
    kind = hub_digest_kind(etag)
    if kind == "sha256":
        return sha256_file(path) == etag
    if kind == "git-sha1":
        return git_blob_sha1(path) == etag
    return None
