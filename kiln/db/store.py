"""The backup bucket on an S3 API (AWS S3, MinIO, Ceph RGW; a moto server in the tests), through boto3.

Layout under the target's prefix (names relative to it are also the sealed objects' names, kiln.db.seal):

    backups/<id>/data                  the sealed mbstream of one mariadb-backup run
    backups/<id>/manifest.json         written last: a backup without it is incomplete and never listed
    binlogs/<host>/<file>              a sealed binary log file of that host, closed when it was copied
    binlogs/<host>/<file>.json         its GTID range, times and sizes
    checkpoints/<time>-<host>-<gtid>.json   row counts and CHECKSUM TABLE of every table at one GTID

Every failure is a StoreError saying what the operator can do (endpoint unreachable, no such bucket, refused
credentials). Only the backup runner holds the credentials; the db hosts never see them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

PART_BYTES = 8 << 20  # multipart upload parts (S3's minimum is 5 MiB, but for the last)
_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 4},
    s3={"addressing_style": "path"},  # MinIO, Ceph and moto: no bucket name in the host name
)


class StoreError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """Where backups go: roles.yaml's roles.db.backup.s3 with the credentials read from secrets/."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: AWS S3 of the region
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")


@dataclass
class Stored:
    """What an upload wrote: the object's size and the sha256 of its bytes (hex)."""

    size: int
    sha256: str


class Store:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._s3 = boto3.client(
            "s3",
            endpoint_url=target.endpoint,
            region_name=target.region,
            aws_access_key_id=target.access_key_id or None,
            aws_secret_access_key=target.secret_access_key or None,
            config=_CONFIG,
        )

    def _key(self, name: str) -> str:
        return self.target.prefix + name

    def _fail(self, doing: str, e: Exception) -> StoreError:
        where = self.target.where
        if isinstance(e, EndpointConnectionError):
            return StoreError(f"{doing}: the S3 endpoint does not answer ({where}): is it up and reachable from here?")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return StoreError(f"{doing}: bucket {self.target.bucket!r} does not exist ({where}): create it first")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return StoreError(
                    f"{doing}: {where} refused the credentials ({code}): check the file roles.db.backup.credentials "
                    "names in secrets/"
                )
            if code in ("NoSuchKey", "404"):
                return StoreError(f"{doing}: no such object in {where}")
            return StoreError(f"{doing}: {where}: {code or e}")
        return StoreError(f"{doing}: {where}: {e}")

    def check(self) -> None:
        """Raise StoreError unless the bucket answers to these credentials."""
        try:
            self._s3.head_bucket(Bucket=self.target.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):  # HEAD answers carry no body
                where = self.target.where
                raise StoreError(f"bucket {self.target.bucket!r} does not exist ({where}): create it first") from None
            raise self._fail("reaching the backup bucket", e) from None
        except BotoCoreError as e:
            raise self._fail("reaching the backup bucket", e) from None

    def put_stream(self, name: str, chunks: Iterable[bytes]) -> Stored:
        """Upload the concatenated `chunks` as object `name` (multipart, PART_BYTES per part); nothing is left
        behind when the stream or the upload fails."""
        key, bucket = self._key(name), self.target.bucket
        digest, size = hashlib.sha256(), 0
        parts: list[dict[str, Any]] = []
        try:
            upload = self._s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"uploading {name}", e) from None
        try:
            buf = bytearray()

            def send(data: bytes) -> None:
                number = len(parts) + 1
                answer = self._s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})

            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buf += chunk
                while len(buf) >= PART_BYTES:
                    send(bytes(buf[:PART_BYTES]))
                    del buf[:PART_BYTES]
            if buf or not parts:
                send(bytes(buf))
            self._s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException as e:
            try:
                self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except (BotoCoreError, ClientError):
                pass
            if isinstance(e, (BotoCoreError, ClientError)):
                raise self._fail(f"uploading {name}", e) from None
            raise
        return Stored(size, digest.hexdigest())

    def get_stream(self, name: str, block: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of object `name`, block by block."""
        try:
            body = self._s3.get_object(Bucket=self.target.bucket, Key=self._key(name))["Body"]
            while data := body.read(block):
                yield data
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"reading {name}", e) from None

    def put_json(self, name: str, value: Any) -> None:
        body = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
        try:
            self._s3.put_object(Bucket=self.target.bucket, Key=self._key(name), Body=body)
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"writing {name}", e) from None

    def get_json(self, name: str) -> Any:
        data = b"".join(self.get_stream(name))
        try:
            return json.loads(data)
        except ValueError:
            raise StoreError(f"{name} in {self.target.where} is not JSON") from None

    def names(self, under: str) -> list[str]:
        """Every object name under `under` (relative to the prefix), sorted."""
        out: list[str] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.target.bucket, Prefix=self._key(under)
            )
            for page in pages:
                out += [o["Key"][len(self.target.prefix) :] for o in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"listing {under}", e) from None
        return sorted(out)

    def delete(self, names: list[str]) -> None:
        try:
            for i in range(0, len(names), 1000):
                objects = [{"Key": self._key(n)} for n in names[i : i + 1000]]
                self._s3.delete_objects(Bucket=self.target.bucket, Delete={"Objects": objects, "Quiet": True})
        except (BotoCoreError, ClientError) as e:
            raise self._fail("deleting expired backups", e) from None
