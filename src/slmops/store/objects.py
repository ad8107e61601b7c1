"""An S3-compatible bucket prefix through boto3: blobs by sha256, JSON records, errors that name the endpoint.

Layout under ``s3://bucket/prefix/``::

    blobs/<sha256>               one file's bytes, addressed by their sha256 (shared by every artifact)
    artifacts/<digest>.json      an artifact's manifest and file list; written last, so its presence
                                 means every blob it names is there
    names/<name>.json            versions (remote numbering) and aliases of a name

An object appears whole or not at all (S3 puts, and multipart uploads on completion), so an
interrupted transfer leaves only complete blobs and no artifact record. Downloads are hashed while
they are written and renamed into place only when the sha256 matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import IntegrityError, StoreError
from slmops.store.remotes import RemoteSpec

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: called with the number of bytes just moved
BytesCallback = Callable[[int], None]


class RemoteError(StoreError):
    """The object store could not be reached or refused the request (the message names the endpoint)."""


class ObjectStore:
    """One remote's bucket prefix. Credentials come from boto3's standard chain, never from us."""

    def __init__(self, spec: RemoteSpec) -> None:
        boto3 = require("boto3", extra="scale", purpose="object-store remotes")
        from botocore.config import Config

        self.spec = spec
        self.bucket, self.prefix = spec.bucket, spec.prefix
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"} if spec.endpoint_url else None)
        self.client = boto3.session.Session().client("s3", endpoint_url=spec.endpoint_url, region_name=spec.region, config=config)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def blob_key(self, sha256: str) -> str:
        if not _HEX64.match(sha256):
            raise IntegrityError(f"{sha256!r} is not a sha256 digest", why="a remote record names a blob that cannot exist")
        return self.key("blobs", sha256)

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn botocore's exceptions into one :class:`RemoteError` naming the remote, its endpoint and the fix."""
        from botocore import exceptions as bx

        where = self.spec.where
        try:
            yield
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError) as exc:
            raise RemoteError(f"cannot reach remote {self.spec.name} ({where}) to {action}", why=str(exc),
                              fix="check --endpoint-url and the network; nothing local was changed, re-run when it is reachable") from exc
        except bx.NoCredentialsError as exc:
            raise RemoteError(f"no credentials for remote {self.spec.name} ({where})", why=str(exc),
                              fix="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (slmops never stores credentials)") from exc
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            fix = {"NoSuchBucket": f"create bucket {self.bucket} first, or fix the remote URL",
                   "AccessDenied": "check the credentials in the environment and the bucket policy",
                   "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID", "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY"}.get(code)
            raise RemoteError(f"remote {self.spec.name} ({where}) refused to {action}", why=f"{code}: {exc}", fix=fix) from exc
        except bx.BotoCoreError as exc:
            raise RemoteError(f"remote {self.spec.name} ({where}) failed to {action}", why=str(exc)) from exc

    # -- small objects -------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self.errors(f"look up {key}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def get_json(self, key: str) -> Any | None:
        from botocore.exceptions import ClientError

        with self.errors(f"read {key}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        try:
            return json.loads(body)
        except ValueError as exc:
            raise RemoteError(f"remote object {key} is not JSON", why=str(exc), fix="it was not written by slmops; check the remote prefix") from exc

    def put_json(self, key: str, data: Any) -> None:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        with self.errors(f"write {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self.errors(f"list {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    # -- blobs ----------------------------------------------------------------------------------
    def put_blob(self, path: Path, sha256: str) -> None:
        """Upload ``path`` as ``blobs/<sha256>`` (multipart for large files; visible only once complete), then check its size there."""
        key = self.blob_key(sha256)
        size = path.stat().st_size
        with self.errors(f"upload {path.name}"):
            self.client.upload_file(str(path), self.bucket, key)
            landed = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        if landed != size:
            raise RemoteError(f"upload of {path.name} to remote {self.spec.name} ({self.spec.where}) is incomplete",
                              why=f"{landed} of {size} bytes arrived", fix="push again; complete blobs are not sent twice")

    def get_blob(self, sha256: str, size: int, dest: Path, on_bytes: BytesCallback | None = None) -> None:
        """Download ``blobs/<sha256>`` to ``dest``, hashing every byte; a mismatch leaves nothing at ``dest``."""
        part = dest.with_name(f".{dest.name}.part")
        h = hashlib.sha256()
        n = 0
        with self.errors(f"download blob {sha256[:12]}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.blob_key(sha256))["Body"]
            with open(part, "wb") as f:
                for chunk in body.iter_chunks(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        if h.hexdigest() != sha256 or n != size:
            part.unlink(missing_ok=True)
            raise IntegrityError(f"blob {sha256[:12]} from remote {self.spec.name} is corrupt",
                                 why=f"its {n} bytes hash to {h.hexdigest()[:12]} (expected {size} bytes)",
                                 fix="push the artifact again from a store that has it intact")
        os.replace(part, dest)
