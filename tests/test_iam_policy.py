"""The shipped IAM policy grants exactly what dropgpu uses, and nothing on inputs/ but reads.

GetObject on _dropgpu/* is needed: the tick reads failure records (give-up
message) and done markers (repairing an interrupted commit), create-if-absent
HEADs the object it just created, and `status` reads claims and done markers.
No code path reads outputs/, so there is no GetObject there.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

INFRA = Path(__file__).resolve().parent.parent / "infra"
BUCKET = "arn:aws:s3:::YOUR-BUCKET"

EXPECTED = {
    ("s3:ListBucket", BUCKET),
    ("s3:GetObject", f"{BUCKET}/inputs/*"),
    ("s3:PutObject", f"{BUCKET}/outputs/*"),
    ("s3:AbortMultipartUpload", f"{BUCKET}/outputs/*"),
    ("s3:GetObject", f"{BUCKET}/_dropgpu/*"),
    ("s3:PutObject", f"{BUCKET}/_dropgpu/*"),
    ("s3:DeleteObject", f"{BUCKET}/_dropgpu/*"),
    ("s3:AbortMultipartUpload", f"{BUCKET}/_dropgpu/*"),
}


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grants() -> set[tuple[str, str]]:
    policy = json.loads((INFRA / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    grants = set()
    for st in policy["Statement"]:
        # Only plain Allow statements: a Condition or NotAction would change the meaning.
        assert st["Effect"] == "Allow"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource"}, st
        for action in _as_list(st["Action"]):
            for resource in _as_list(st["Resource"]):
                grants.add((action, resource))
    return grants


def allowed(action: str, key: str | None) -> bool:
    """Does the policy allow ``action`` on the bucket (key None) or on object ``key``?"""
    target = BUCKET if key is None else f"{BUCKET}/{key}"
    return any(a == action and fnmatchcase(target, r) for a, r in _grants())


def test_policy_grants_exactly_the_expected_pairs() -> None:
    assert _grants() == EXPECTED
    assert not any("*" in action for action, _ in _grants())


@pytest.mark.parametrize(
    ("action", "key"),
    [
        ("s3:ListBucket", None),  # LIST inputs/, _dropgpu/done/, _dropgpu/claims/
        ("s3:GetObject", "inputs/vertical/live/set 1.mp4"),  # download (If-Match)
        ("s3:PutObject", "outputs/vertical/live/set 1.mp4/vertical.mp4"),  # outputs, multipart
        ("s3:PutObject", "outputs/vertical/live/set 1.mp4/manifest.json"),
        ("s3:PutObject", "_dropgpu/claims/vertical/a.mp4@e/attempt-1"),  # claim, heartbeat
        ("s3:GetObject", "_dropgpu/claims/vertical/a.mp4@e/attempt-1"),  # HEAD after create
        ("s3:PutObject", "_dropgpu/done/vertical/a.mp4@e"),  # the fence
        ("s3:GetObject", "_dropgpu/done/vertical/a.mp4@e"),  # repair, status --cost
        ("s3:DeleteObject", "_dropgpu/claims/vertical/a.mp4@e/attempt-1"),  # commit cleanup
        ("s3:DeleteObject", "_dropgpu/done/vertical/a.mp4@e"),  # dropgpu retry
    ],
)
def test_every_call_dropgpu_makes_is_allowed(action: str, key: str | None) -> None:
    assert allowed(action, key)


@pytest.mark.parametrize(
    ("action", "key"),
    [
        ("s3:PutObject", "inputs/vertical/a.mp4"),  # inputs are read-only to dropgpu
        ("s3:DeleteObject", "inputs/vertical/a.mp4"),
        ("s3:DeleteObject", "outputs/vertical/a.mp4/manifest.json"),
        ("s3:GetObject", "outputs/vertical/a.mp4/manifest.json"),
        ("s3:PutObject", "other/file"),
        ("s3:GetObject", "other/file"),
        ("s3:DeleteBucket", None),
        ("s3:PutBucketPolicy", None),
    ],
)
def test_nothing_else_is_allowed(action: str, key: str | None) -> None:
    assert not allowed(action, key)


def test_lifecycle_rule_only_expires_internal_records() -> None:
    rules = json.loads((INFRA / "lifecycle-rule.json").read_text())["Rules"]
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules if "Expiration" in r}
    # Never done markers (they make identical re-uploads free), never inputs/outputs.
    assert set(expiring) == {"_dropgpu/claims/", "_dropgpu/feed/", "_dropgpu/webhooks/"}
    # Longer than any job can hold a claim (route timeouts are capped at 24 h).
    assert expiring["_dropgpu/claims/"] >= 2
    for rule in rules:
        assert rule["Status"] == "Enabled"
        assert not rule["Filter"]["Prefix"].startswith("inputs/")
        assert set(rule) <= {
            "ID",
            "Status",
            "Filter",
            "Expiration",
            "AbortIncompleteMultipartUpload",
        }
