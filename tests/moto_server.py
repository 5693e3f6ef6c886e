"""A moto server (moto[server], a dev dependency) on loopback with an ephemeral port, for the tests
and bench/ami.py: a real HTTP endpoint speaking the EC2 and EBS APIs, given to boto3 as endpoint_url.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# moto tells services apart by the SigV4 credential scope, so one endpoint serves both ebs and ec2.
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_CONFIG_FILE": "/dev/null",  # never a real profile
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",  # never the instance metadata address
}
_READY = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


@contextmanager
def moto_server(*, startup_timeout: float = 30.0) -> Iterator[str]:
    """Yield the endpoint URL of a moto server on 127.0.0.1; the process is ended on exit, whatever happens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=50)
    found: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # moto logs every request on stderr: keep reading so the pipe never fills
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            if not found and (m := _READY.search(line)):
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=drain, name="kiln-ami-moto-log", daemon=True).start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not ready.wait(0.1):
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server not ready after {startup_timeout}s:\n{''.join(tail)}")
        if not found:
            raise RuntimeError(f"moto server exited {proc.poll()}:\n{''.join(tail)}")
        yield found[0]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_bucket(endpoint: str, bucket: str) -> None:
    """An S3 bucket on the moto server at `endpoint`, as an operator creates it before kiln writes there."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=bucket)
