"""A real S3 endpoint and a real Ray cluster on 127.0.0.1, for the tests and benchmarks of ``slmops[scale]``.

:func:`s3_endpoint` serves moto's S3 implementation over HTTP on a free loopback port (the same
protocol boto3 speaks to AWS or MinIO) with throw-away credentials in the environment;
:func:`ray_cluster` starts a local Ray cluster with a fixed number of CPUs and no dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmops._optional import require

#: Credentials moto accepts; set in the environment only while an endpoint runs.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "SLMOPSTESTKEYID", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-0123456789", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_endpoint(bucket: str = "slmops-test") -> Iterator[str]:
    """Serve S3 on ``http://127.0.0.1:<free port>`` with ``bucket`` created; yields the endpoint URL."""
    server_mod = require("moto.server", extra="scale", purpose="a local S3 endpoint")
    boto3 = require("boto3", extra="scale")
    old = {k: os.environ.get(k) for k in TEST_CREDENTIALS}
    os.environ.update(TEST_CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.session.Session().client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_cluster(num_cpus: int = 2, *, worker_home: Path | None = None) -> Iterator[Any]:
    """A local Ray cluster with ``num_cpus`` CPUs whose workers import this slmops (and keep their store in ``worker_home``)."""
    ray = require("ray", extra="scale", purpose="a local Ray cluster")
    import slmops

    src = str(Path(slmops.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, **{k: os.environ[k] for k in TEST_CREDENTIALS if k in os.environ}}
    if worker_home is not None:
        env["SLMOPS_WORKER_HOME"] = str(worker_home)
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": env}, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()
