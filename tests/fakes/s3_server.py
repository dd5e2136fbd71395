"""moto's S3 server on loopback, for tests of the ``s3`` R2 backend.

A test fake, not a product feature: it must not import ``deepmox``.

moto's ``ThreadedMotoServer`` serves every AWS API moto knows from a werkzeug
server in a daemon thread of this process. It is started on ``127.0.0.1`` port
0: the kernel picks a free port when the socket is bound, and the port is read
back from the bound socket (``server_address``) after ``start()`` returns, which
waits until the socket exists -- so there is no window in which another process
could take the port. (A ``python -m moto.server -p0`` subprocess would have to
print its port, and moto's does not.)

moto keeps its state in process-wide backends: tests isolate themselves by
giving each store a bucket of its own (:func:`unique_bucket`).

Usage::

    with serve_s3() as server:
        client = server.client()          # boto3, region eu-west-1, test keys
        ...
        client.close()
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: moto accepts any keys; these are test values, not secrets
ACCESS_KEY = "AKIATESTTESTTESTTEST"
SECRET_KEY = "test-secret-key-not-a-secret-0123456789"
#: moto refuses R2's region "auto" as a LocationConstraint; the product keeps "auto"
REGION = "eu-west-1"


@dataclass(frozen=True)
class S3Server:
    host: str
    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server, configured as deepmox configures
        its own (checksums when required, no retries, path-style, SigV4)."""
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"total_max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                **config,
            ),
        )

    def create_bucket(self, client: Any, name: str | None = None) -> str:
        name = name or unique_bucket()
        client.create_bucket(Bucket=name,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        return name


def unique_bucket() -> str:
    return f"deepmox-test-{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def serve_s3() -> Iterator[S3Server]:
    """Run moto's server on 127.0.0.1 (a free port) until the block ends."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(host=host, port=port)
    finally:
        server.stop()
        # stop() shuts the serving loop down but leaves the socket open
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            wsgi.server_close()
