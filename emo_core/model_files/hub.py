"""Hugging Face files through huggingface_hub: its cache (HF_HOME / HF_HUB_CACHE), endpoint (HF_ENDPOINT), token
(HF_TOKEN or `hf auth login`) and retries, which resume an interrupted transfer with a Range request.

Each file is pinned to the commit the hub names for it, and its bytes are checked against the digest the hub
reports (SHA-256 for LFS files, the git blob hash for small files): the hub library itself does not check them.
A file that fails the check is removed from the cache and downloaded once more; failing again, it is refused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptFileError, DownloadError, MissingDependencyError
from .catalog import HubSource
from .digests import git_blob_sha1, hub_digest_kind, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """A downloaded file (in the hub cache) and what it was checked against."""
    path: Path
    size: int
    sha256: str
    revision: str
    checked_against: str


def _hub():
    try:
        import huggingface_hub
    except ImportError as err:
        raise MissingDependencyError("downloading models needs huggingface_hub: pip install huggingface_hub") from err
    return huggingface_hub


def fetch_hub_file(source: HubSource) -> Fetched:
    """Download `source` into the hub cache (or find it there) and check its bytes; -> Fetched."""
    hub = _hub()
    meta = _metadata(hub, source)
    for attempt in (1, 2):
        path = Path(_download(hub, source, meta.commit_hash, force=attempt == 2))
        problem, sha256 = _check(path, meta)
        if problem is None:
            kind = hub_digest_kind(meta.etag)
            against = {"sha256": "the hub's LFS SHA-256", "git-sha1": "the hub's git blob hash"}.get(kind, "size only")
            return Fetched(path, path.stat().st_size, sha256, meta.commit_hash, against)
        _evict(path)
        log.warning("%s: %s; removed from the cache%s", source.filename, problem,
                    ", downloading it again" if attempt == 1 else "")
    raise CorruptFileError(f"{source.describe()} came down twice with {problem}; it was not placed (a proxy or mirror "
                           f"may alter it: check HF_ENDPOINT) and the download was removed from the hub cache")


def _metadata(hub, source: HubSource):
    """The hub's commit, ETag (digest) and size for the file at its revision."""
    url = hub.hf_hub_url(source.repo_id, source.filename, revision=source.revision)
    try:
        meta = hub.get_hf_file_metadata(url)
    except Exception as err:  # the hub library's network and HTTP errors share no narrower base
        raise DownloadError(f"cannot reach {source.describe()} ({type(err).__name__}: {_first_line(err)}); check "
                            "the network, HF_ENDPOINT and, for a gated repository, your token (hf auth login)") from err
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(f"{url} answered without a commit or ETag header; is HF_ENDPOINT a Hugging Face hub?")
    return meta


def _download(hub, source: HubSource, commit: str, force: bool) -> str:
    try:
        return hub.hf_hub_download(source.repo_id, source.filename, revision=commit, force_download=force)
    except Exception as err:  # see _metadata
        raise DownloadError(f"downloading {source.describe()} failed ({type(err).__name__}: {_first_line(err)}); "
                            "run the command again: finished files are kept") from err


def _check(path: Path, meta) -> tuple[str | None, str]:
    """(what is wrong or None, the file's SHA-256)."""
    size = path.stat().st_size
    if meta.size is not None and size != meta.size:
        return f"{size} bytes where the hub says {meta.size}", ""
    sha256 = sha256_file(path)
    kind = hub_digest_kind(meta.etag)
    if kind == "sha256" and sha256 != meta.etag:
        return f"SHA-256 {sha256[:12]}... where the hub says {meta.etag[:12]}...", sha256
    if kind == "git-sha1" and git_blob_sha1(path) != meta.etag:
        return f"a git blob hash other than the hub's {meta.etag[:12]}...", sha256
    return None, sha256


def _evict(pointer: Path) -> None:
    """Remove a cached file: the snapshot entry and the blob it points to."""
    blob = Path(os.path.realpath(pointer))
    for path in {pointer, blob}:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
