"""Upload throughput of the ``s3`` R2 backend against a bare boto3
``upload_file`` of the same file, both to moto's S3 server on loopback (run as
its own process). Target: at least 0.9 of boto3's throughput.

    .venv/bin/python bench/s3_upload.py [--mb 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

from _harness import free_port, record, workdir
from deepmox import config
from deepmox.bindings.r2 import open_r2

REGION = "eu-west-1"
KEYS = {"AWS_ACCESS_KEY_ID": "bench-access", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    os.environ.update(KEYS)
    d = workdir("s3")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", region_name=REGION, endpoint_url=endpoint,
            config=Config(request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          s3={"addressing_style": "path"}, signature_version="s3v4"))
        deadline = time.time() + 30
        while True:
            try:
                client.create_bucket(Bucket="bench",
                                     CreateBucketConfiguration={"LocationConstraint": REGION})
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        data = d / "payload.bin"
        with data.open("wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1024 * 1024))
        size = data.stat().st_size
        cfg = config.decode(
            f'[r2]\nbackend = "s3"\nendpoint_url = "{endpoint}"\nbucket = "bench"\n'
            f'region = "{REGION}"\n')
        r2 = open_r2(cfg.r2)

        def bare(i: int) -> float:
            t = time.perf_counter()
            client.upload_file(str(data), "bench", f"bare/{i}")
            return time.perf_counter() - t

        async def ours(i: int) -> float:
            t = time.perf_counter()
            await r2.put(f"deepmox/{i}", Path(data))
            return time.perf_counter() - t

        bare_s, ours_s = [], []
        for i in range(args.reps):  # interleaved
            bare_s.append(bare(i))
            ours_s.append(trio.run(ours, i))
        trio.run(r2.aclose)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(d)
    mb = size / 1e6
    b, o = mb / statistics.median(bare_s), mb / statistics.median(ours_s)
    print(f"{mb:.0f} MB: boto3 upload_file {b:.1f} MB/s, deepmox s3 put {o:.1f} MB/s, "
          f"ratio {o / b:.2f} (median of {args.reps})")
    record("Object storage: s3 backend upload throughput", "\n".join([
        f"`.venv/bin/python bench/s3_upload.py --mb {args.mb} --reps {args.reps}` (one "
        f"{mb:.0f} MB file to moto's S3 server on loopback, its own process; target ratio ≥ 0.9)\n",
        "| boto3 upload_file MB/s | deepmox S3R2.put MB/s | ratio |", "|---:|---:|---:|",
        f"| {b:.1f} | {o:.1f} | {o / b:.2f} |",
        "\nboto3's `upload_file` with its defaults (8 MiB parts, 10 threads); deepmox with "
        "its defaults (`multipart_threshold_bytes` 8 MiB parts, `max_threads` 10, parts read "
        "and sent from worker threads). All runs (s): boto3 "
        + ", ".join(f"{x:.2f}" for x in bare_s) + "; deepmox "
        + ", ".join(f"{x:.2f}" for x in ours_s) + ".",
    ]))


if __name__ == "__main__":
    main()
