"""Can the server's own keys erase the offsite history? Run ON the server by the replication user in its
venv (boto3, pinned, installed by `fab provision` for S3 targets), from the nightly drill. Two answers
from the bucket itself: is versioning on (a delete then only hides an object: its old versions stay),
and does deleting an old version fail with these keys (the IAM policy that `fab offsite --iam-policy`
prints grants no s3:DeleteObjectVersion). It writes one small object of its own under the prefix and
tries to delete that object's version: nothing of Litestream's or restic's is touched. Prints JSON:
{"versioning": "Enabled" | "Suspended" | "off" | "unknown", "erasable": bool | null, "problem": str | null}

    python -I offsite-history.py BUCKET PREFIX ENDPOINT REGION   (ENDPOINT "" for AWS; keys in the environment)
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

PROBE = "history-probe"
DENIED = ("AccessDenied", "AllAccessDisabled", "MethodNotAllowed", "NotImplemented")


def probe(client, bucket: str, prefix: str) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError

    def code(error: ClientError) -> str:
        return error.response.get("Error", {}).get("Code", "")

    result: dict = {"versioning": "unknown", "erasable": None, "problem": None}
    try:
        result["versioning"] = client.get_bucket_versioning(Bucket=bucket).get("Status") or "off"
    except ClientError as error:
        if code(error) not in DENIED:
            result["problem"] = f"reading the bucket's versioning: {error}"
            return result
    key = f"{prefix}/{PROBE}" if prefix else PROBE
    try:
        written = client.put_object(Bucket=bucket, Key=key, Body=datetime.now(timezone.utc).isoformat().encode())
    except (ClientError, BotoCoreError) as error:
        result["problem"] = f"writing {key}: {error}"
        return result
    version = written.get("VersionId")
    if not version or version == "null":
        result["erasable"] = True    # no versions: a delete (or an overwrite) is final
        return result
    try:
        client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        result["erasable"] = True
    except ClientError as error:
        if code(error) not in DENIED:
            result["problem"] = f"deleting a version of {key}: {error}"
            return result
        result["erasable"] = False
    return result


def main(argv: list[str]) -> int:
    bucket, prefix, endpoint, region = argv
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"} if endpoint else {}, retries={"max_attempts": 3})
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=region, config=config)
    print(json.dumps(probe(client, bucket, prefix)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
