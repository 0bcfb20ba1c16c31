"""Packaging for each cloud, and the infrastructure templates' lint (cfn-lint, checkov).

cfn-lint and checkov live in their own virtualenv (``make test`` builds ``.venv-iac``; their
pins clash with the test dependencies). With ``CI`` set a missing linter fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.required import missing

ROOT = Path(__file__).resolve().parent.parent
IAC_BIN = ROOT / ".venv-iac" / "bin"


def tool(name: str) -> str:
    path = IAC_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    missing(f"{name} not installed: run `make test` (it builds .venv-iac)")


@pytest.mark.parametrize(
    ("cloud", "entry", "absent"),
    [
        ("aws", "functions/aws_lambda.py", ["main.py", "function_app.py"]),
        ("gcp", "main.py", ["functions/aws_lambda.py", "function_app.py"]),
        ("azure", "function_app.py", ["functions/aws_lambda.py", "main.py"]),
    ],
)
def test_package_holds_only_what_the_cloud_needs(
    tmp_path: Path, cloud: str, entry: str, absent: list[str]
) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "package.py"), cloud, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(tmp_path / f"{cloud}.zip").namelist())
    assert {
        entry,
        "requirements.txt",
        "syncd/events/parse.py",
        "syncd/events/delivery.py",
        "providers/base.py",
    } <= names
    assert not names & set(absent)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    requirements = (tmp_path / cloud / "requirements.txt").read_text()
    others = {
        "aws": ["functions-framework", "azure-functions"],
        "gcp": ["azure-functions", "boto3"],
        "azure": ["functions-framework", "boto3"],
    }[cloud]
    assert not any(o in requirements for o in others)
    # the packaged handler imports from the package folder alone
    module = {"aws": "functions.aws_lambda", "gcp": "main", "azure": "function_app"}[cloud]
    check = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=tmp_path / cloud,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path / cloud)},
    )
    assert check.returncode == 0, check.stderr


def test_cfn_lint_passes() -> None:
    proc = subprocess.run(
        [
            tool("cfn-lint"),
            str(ROOT / "infra" / "aws" / "template.yaml"),
            str(ROOT / "infra" / "aws" / "daemon-queue.yaml"),
            str(ROOT / "infra" / "aws" / "bucket-owner-role.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_passes_on_all_templates() -> None:
    proc = subprocess.run(
        [
            tool("checkov"),
            "-d",
            str(ROOT / "infra"),
            "--framework",
            "cloudformation",
            "terraform",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Failed checks: 0" in proc.stdout and "Passed checks" in proc.stdout


def test_the_daemon_permissions_are_read_only_on_objects() -> None:
    """Least privilege for syncd run: the AWS policy and the Azure/GCP role bindings grant
    reading objects and processing queue messages, never writing or deleting objects. (A text
    check: no HCL parser is installed; the CloudFormation policy is parsed as YAML.)"""
    template = cloudformation(ROOT / "infra" / "aws" / "daemon-queue.yaml")
    policy = template["Resources"]["DaemonPolicy"]["Properties"]["PolicyDocument"]
    assert set(iam_actions(policy)) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "s3:ListBucket",
        "s3:GetObject",
    }
    azure = (ROOT / "infra" / "azure" / "daemon" / "main.tf").read_text()
    assert set(re.findall(r'role_definition_name\s*=\s*"([^"]+)"', azure)) == {
        "Storage Queue Data Message Processor",
        "Storage Queue Data Message Sender",
        "Storage Blob Data Reader",
    }
    gcp = (ROOT / "infra" / "gcp" / "daemon" / "main.tf").read_text()
    assert set(re.findall(r'role\s*=\s*"([^"]+)"', gcp)) == {
        "roles/pubsub.publisher",  # the GCS service agent, on the topic
        "roles/pubsub.subscriber",
        "roles/storage.objectViewer",
    }


def test_the_bucket_owner_role_trusts_only_syncd_and_only_with_the_external_id() -> None:
    """infra/aws/bucket-owner-role.yaml: one trust statement, for the one principal syncd runs
    as, conditioned on the external ID; the role may list and read one bucket, nothing else.
    (tests/test_role_credentials.py assumes this very role on moto, with IAM checks on.)"""
    template = cloudformation(ROOT / "infra" / "aws" / "bucket-owner-role.yaml")
    role = template["Resources"]["SyncdReadRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow" and trust["Action"] == "sts:AssumeRole"
    assert trust["Principal"] == {"AWS": "SyncdPrincipalArn"}  # !Ref: one ARN, no wildcard
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": "ExternalId"}}
    assert role["MaxSessionDuration"] <= 3600
    [policy] = role["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert {(s["Action"], s["Resource"]) for s in statements} == {
        ("s3:ListBucket", "arn:${AWS::Partition}:s3:::${BucketName}"),
        ("s3:GetObject", "arn:${AWS::Partition}:s3:::${BucketName}/*"),
    }
    assert all(s["Effect"] == "Allow" for s in statements)
    security = (ROOT / "SECURITY.md").read_text()
    assert all(f"`{s['Action']}`" in security for s in statements)


def cloudformation(path: Path) -> dict:
    """A CloudFormation/SAM template as data; intrinsics (``!Ref`` ...) become their scalar or
    None."""
    import yaml

    class Tags(yaml.SafeLoader):
        pass

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
        return loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None

    Tags.add_multi_constructor("!", intrinsic)
    return yaml.load(path.read_text(), Tags)


def iam_actions(node: object) -> list[str]:
    """Every action of every IAM statement anywhere under ``node``."""
    found: list[str] = []
    if isinstance(node, dict):
        if "Effect" in node and "Action" in node:
            listed = node["Action"]
            found += [listed] if isinstance(listed, str) else list(listed)
        for value in node.values():
            found += iam_actions(value)
    elif isinstance(node, list):
        for value in node:
            found += iam_actions(value)
    return found


def test_the_templates_grant_no_more_than_security_md_says() -> None:
    """Every IAM action, SAM policy template and role the templates grant is named in
    SECURITY.md; none is a wildcard, a write or a delete on objects, or an admin role; the
    Azure daemon's roles are scoped to one queue or container. (SECURITY.md lists push's and
    delete's permissions too, but no template grants them.)"""
    security = (ROOT / "SECURITY.md").read_text()
    templates = [
        ROOT / "infra" / "aws" / "template.yaml",
        ROOT / "infra" / "aws" / "daemon-queue.yaml",
        ROOT / "infra" / "aws" / "bucket-owner-role.yaml",
    ]
    actions: set[str] = set()
    sam_policies: set[str] = set()
    for path in templates:
        template = cloudformation(path)
        actions |= set(iam_actions(template))
        for resource in template["Resources"].values():
            for policy in resource.get("Properties", {}).get("Policies", []) or []:
                # a SAM policy template, by name (not an inline statement or IAM role policy)
                if isinstance(policy, dict) and not {"Statement", "PolicyDocument"} & set(policy):
                    sam_policies |= set(policy)
    assert actions == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:SendMessage",
        "s3:ListBucket",
        "s3:GetObject",
        "secretsmanager:GetSecretValue",
        "sts:AssumeRole",  # the bucket owner's role trusts syncd's principal (trust policy)
    }
    assert sam_policies == {"SQSSendMessagePolicy"}
    for granted in actions | sam_policies:
        assert "*" not in granted and f"`{granted}`" in security, granted
    assert not any(a.startswith(("s3:Put", "s3:Delete")) for a in actions)

    hcl = {p: p.read_text() for p in (ROOT / "infra").rglob("*.tf")}
    roles = {r for text in hcl.values() for r in re.findall(r'\brole\s*=\s*"([^"]+)"', text)}
    roles |= {
        r
        for text in hcl.values()
        for r in re.findall(r'role_definition_name\s*=\s*"([^"]+)"', text)
    }
    assert roles, "no role found: the pattern no longer matches the templates"
    broad = {
        "roles/owner",
        "roles/editor",
        "roles/storage.admin",
        "roles/storage.objectAdmin",
        "roles/storage.objectUser",
        "roles/pubsub.admin",
        "Owner",
        "Contributor",
        "Storage Blob Data Owner",
        "Storage Blob Data Contributor",
        "Storage Queue Data Contributor",
    }
    assert not roles & broad
    for role in roles:
        assert f"`{role}`" in security, role
    daemon = hcl[ROOT / "infra" / "azure" / "daemon" / "main.tf"]
    scopes = re.findall(r"\bscope\s*=\s*(.+)", daemon)
    assert len(scopes) == 3
    assert all("queues" in s or "container" in s for s in scopes), scopes


def test_systemd_unit() -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "syncd.service")
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert service["User"] == "syncd" and service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["ReadWritePaths"] == "/var/lib/syncd"
    assert "EnvironmentFile" in service  # secrets come from a root-owned file, not the unit
