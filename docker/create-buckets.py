"""The compose `buckets` service: create the S3 buckets the stack stores in, then exit.

  python docker/create-buckets.py BUCKET...

MinIO (or any S3-compatible store) at AWS_ENDPOINT_URL, with the keys in AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY. A bucket that exists already is kept as it is, so the service can run on
every `docker compose up`.
"""

import sys

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main(buckets: list[str]) -> None:
    if not buckets:
        sys.exit("usage: create-buckets.py BUCKET...")
    client = boto3.client("s3")
    try:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in buckets:
            if bucket in existing:
                print(f"bucket {bucket}: exists")
                continue
            client.create_bucket(Bucket=bucket)
            print(f"bucket {bucket}: created")
    except (BotoCoreError, ClientError) as exc:
        sys.exit(f"error: S3 store {client.meta.endpoint_url}: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
