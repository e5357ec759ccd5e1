"""S3 inputs: list a bucket through the filter, download what matches into the cache.

Listing is pruned per dimension level as the original did: a level whose
filter is a string or a list becomes one key prefix per value, a level that
is ``"*"`` or a range is listed with ``Delimiter="/"`` and its sub-prefixes
filtered, so a narrow filter never lists the whole bucket.  Downloads run in
parallel into ``{work_dir}/cache/{key}``; a file already there with the same
size and ETag is not fetched again.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from converter.layout import dimensions_from_path, is_layout_file, path_filter
from converter.schema import Schema
from mapreduce.errors import JobError


@dataclass(frozen=True)
class RemoteFile:
    key: str
    size: int
    etag: str

    @property
    def dimensions(self) -> list[str]:
        return dimensions_from_path(self.key)


@dataclass(frozen=True)
class Download:
    key: str
    path: Path
    size: int
    fetched: bool   # False when the cache already held it

    @property
    def dimensions(self) -> list[str]:
        return dimensions_from_path(self.key)


def key_prefixes(filter: Schema | None, list_level) -> list[str]:
    """The key prefixes of the directory levels the filter allows.

    ``list_level(prefix)`` answers the sub-prefixes (``"a/b/"``) under a
    prefix; it is asked only for levels whose filter is not a plain value
    list.  The last two dimensions live in the file name, not in directories.
    """
    if filter is None:
        return [""]
    prefixes = [""]
    for level, dim in enumerate(filter.dimensions[:-2]):
        allowed = dim.allowed_values
        if isinstance(allowed, str) and allowed != "*":
            prefixes = [p + allowed + "/" for p in prefixes]
        elif isinstance(allowed, list):
            prefixes = [p + str(v) + "/" for p in prefixes for v in allowed]
        else:
            prefixes = [sub for p in prefixes for sub in list_level(p)
                        if filter.allows_level(level, sub[len(p):].rstrip("/"))]
    return prefixes


def file_prefixes(filter: Schema | None, prefixes: list[str]) -> list[str]:
    """Narrow each directory prefix by the first file-name dimension when it is a value list."""
    if filter is None or len(filter.dimensions) < 2:
        return prefixes
    allowed = filter.dimensions[-2].allowed_values
    if isinstance(allowed, str) and allowed != "*":
        return [p + allowed + "." for p in prefixes]
    if isinstance(allowed, list):
        return [p + str(v) + "." for p in prefixes for v in allowed]
    return prefixes


class S3Source:
    """A bucket of published layout files."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, aws_key: str | None = None,
                 aws_secret_key: str | None = None, threads: int = 8):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.threads = max(1, threads)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=aws_key,
                                   aws_secret_access_key=aws_secret_key,
                                   config=Config(max_pool_connections=max(10, self.threads)))

    def _list_level(self, prefix: str) -> list[str]:
        subs = []
        for page in self._pages(Prefix=prefix, Delimiter="/"):
            subs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return subs

    def _pages(self, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            paginator = self.client.get_paginator("list_objects_v2")
            yield from paginator.paginate(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as e:
            prefix = kwargs.get("Prefix", "")
            raise JobError(f"cannot list s3://{self.bucket}/{prefix}: {e}") from None

    def list(self, filter: Schema | None) -> list[RemoteFile]:
        """Every published file in the bucket whose dimensions pass ``filter``."""
        cleaned = path_filter(filter) if filter is not None else None
        prefixes = file_prefixes(cleaned, key_prefixes(cleaned, self._list_level))
        found = []
        for prefix in prefixes:
            for page in self._pages(Prefix=prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if not is_layout_file(key.rsplit("/", 1)[-1], include_plain=False):
                        continue
                    if cleaned is None or cleaned.allows(dimensions_from_path(key)):
                        found.append(RemoteFile(key, obj["Size"], obj.get("ETag", "").strip('"')))
        found.sort(key=lambda r: r.key)
        return found

    def download(self, files: list[RemoteFile], cache_dir: str | os.PathLike) -> list[Download]:
        """Fetch ``files`` into ``cache_dir`` in parallel, skipping what is there already."""
        cache_dir = Path(cache_dir)
        if not files:
            return []
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(lambda r: self._fetch(r, cache_dir), files))

    def _fetch(self, remote: RemoteFile, cache_dir: Path) -> Download:
        from botocore.exceptions import BotoCoreError, ClientError

        target = cache_dir / remote.key
        if not target.resolve().is_relative_to(cache_dir.resolve()):
            raise JobError(f"s3://{self.bucket}/{remote.key}: key leaves the cache directory")
        etag_file = target.with_name(f".{target.name}.etag")
        if (target.is_file() and target.stat().st_size == remote.size and etag_file.is_file()
                and etag_file.read_text() == remote.etag):
            return Download(remote.key, target, remote.size, fetched=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            self.client.download_file(self.bucket, remote.key, os.fspath(partial))
        except (BotoCoreError, ClientError, OSError) as e:
            partial.unlink(missing_ok=True)
            raise JobError(f"cannot download s3://{self.bucket}/{remote.key}: {e}") from None
        os.replace(partial, target)
        etag_file.write_text(remote.etag)
        return Download(remote.key, target, remote.size, fetched=True)
