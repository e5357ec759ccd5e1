"""MapReduce inputs from S3 (moto in server mode on loopback): pruned listing, cached downloads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import boto3
import pytest

from converter.layout import dimensions_from_path, path_filter
from converter.schema import Schema
from converter.synthetic import make_records, write_layout
from mapreduce.errors import JobError
from mapreduce.job import JobConfig, run_job
from mapreduce.s3 import S3Source, key_prefixes

EXAMPLES = Path(__file__).resolve().parent.parent / "mapreduce" / "examples"
DIMS = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]


def write_filter(path: Path, **allowed) -> Path:
    path.write_text(json.dumps({"version": 1, "dimensions": [
        {"field_name": d, "allowed_values": allowed.get(d, "*")} for d in DIMS]}))
    return path


@pytest.fixture
def bucket(s3_endpoint, tmp_path):
    """A bucket holding a synthetic published layout; yields (name, records, keys)."""
    records = make_records(120, seed=3, payload_kb=1)
    local = tmp_path / "upload"
    write_layout(local, records, records_per_file=20)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="telemetry-published")
    keys = []
    for path in sorted(local.rglob("*.zst")):
        key = path.relative_to(local).as_posix()
        client.upload_file(str(path), "telemetry-published", key)
        keys.append(key)
    client.put_object(Bucket="telemetry-published", Key="README.txt", Body=b"not a layout file")
    return "telemetry-published", records, keys


def config(tmp_path, bucket_name, endpoint, filter, data=None, **kw) -> JobConfig:
    data = data or tmp_path / "empty"
    data.mkdir(exist_ok=True)
    return JobConfig(job_script=EXAMPLES / "os_distribution.py", data_dir=data,
                     work_dir=tmp_path / "work", output=tmp_path / "out.txt", input_filter=filter,
                     num_mappers=2, bucket=bucket_name, endpoint_url=endpoint, **kw)


def test_bucket_job_downloads_only_matching_keys_then_uses_the_cache(tmp_path, s3_endpoint, bucket):
    name, records, keys = bucket
    filter = write_filter(tmp_path / "f.json", appName=["Firefox"], appUpdateChannel="nightly",
                          submission_date={"min": "20131102"})
    schema = path_filter(Schema.load(filter))
    matching = sorted(k for k in keys if schema.allows(dimensions_from_path(k)))
    assert 0 < len(matching) < len(keys)
    result = run_job(config(tmp_path, name, s3_endpoint, filter), log=lambda m: None)
    assert sorted(result.downloaded) == matching and result.cached == []
    cached = sorted(p.relative_to(tmp_path / "work" / "cache").as_posix()
                    for p in (tmp_path / "work" / "cache").rglob("*.zst"))
    assert cached == matching
    raw_filter = Schema.load(filter)
    expected = Counter(r.payload["info"]["OS"] for r in records if raw_filter.allows(r.dimensions))
    assert sorted((tmp_path / "out.txt").read_text().splitlines()) == \
        sorted(f"{k}\t{v}" for k, v in expected.items())
    # A second run fetches nothing: same size and ETag are already in the cache.
    again = run_job(config(tmp_path, name, s3_endpoint, filter), log=lambda m: None)
    assert again.downloaded == [] and sorted(again.cached) == matching
    assert again.records == result.records == sum(expected.values())


def test_local_files_are_not_downloaded_again(tmp_path, s3_endpoint, bucket):
    name, records, keys = bucket
    filter = write_filter(tmp_path / "f.json", appName="Fennec")
    data = tmp_path / "data"
    # One extra local file.
    write_layout(data, [r for r in records if r.dimensions[1] == "Fennec"][:1])
    # The cache used as data dir: what is already there is read once, not twice.
    first = run_job(config(tmp_path, name, s3_endpoint, filter), log=lambda m: None)
    cache = tmp_path / "work" / "cache"
    cache_as_data = run_job(config(tmp_path, name, s3_endpoint, filter, data=cache),
                            log=lambda m: None)
    assert cache_as_data.downloaded == [] and cache_as_data.cached == []
    assert cache_as_data.records == first.records
    mixed = run_job(config(tmp_path, name, s3_endpoint, filter, data=data), log=lambda m: None)
    assert mixed.records == first.records + 1


def test_key_prefixes_list_only_levels_without_value_lists():
    filter = path_filter(Schema({"dimensions": [
        {"field_name": "reason", "allowed_values": "saved-session"},
        {"field_name": "appName", "allowed_values": ["Firefox", "Fennec"]},
        {"field_name": "appUpdateChannel", "allowed_values": "*"},
        {"field_name": "appVersion", "allowed_values": {"min": "24"}},
        {"field_name": "appBuildID", "allowed_values": "*"},
        {"field_name": "submission_date", "allowed_values": "*"}]}))
    asked = []
    tree = {"saved_session/Firefox/": ["nightly", "release"],
            "saved_session/Fennec/": ["beta"],
            "saved_session/Firefox/nightly/": ["23.0", "26.0a1"],
            "saved_session/Firefox/release/": ["24.0"],
            "saved_session/Fennec/beta/": ["25.0"]}

    def list_level(prefix):
        asked.append(prefix)
        return [f"{prefix}{name}/" for name in tree.get(prefix, [])]

    assert key_prefixes(filter, list_level) == [
        "saved_session/Firefox/nightly/26.0a1/", "saved_session/Firefox/release/24.0/",
        "saved_session/Fennec/beta/25.0/"]
    # The first two levels became prefixes without listing; "23.0" was pruned without entering it.
    assert asked == ["saved_session/Firefox/", "saved_session/Fennec/",
                     "saved_session/Firefox/nightly/", "saved_session/Firefox/release/",
                     "saved_session/Fennec/beta/"]


def test_missing_bucket_is_a_job_error(tmp_path, s3_endpoint):
    source = S3Source("no-such-bucket", endpoint_url=s3_endpoint)
    with pytest.raises(JobError, match="cannot list s3://no-such-bucket"):
        source.list(None)
