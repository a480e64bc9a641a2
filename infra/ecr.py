"""Container repositories for app sites whose image the stack hosts (sites[].app.ecr).

    AppRepositories
      app-images-key            KMS key (rotation on) that encrypts the repositories
      app-<site>-images         ECR repository: KMS-encrypted, scan on push, immutable tags
      app-image-pull            IAM role the workers assume (instance profile): pull from
                                these repositories only
      app-image-pull-profile

The workers pull by digest with podman through the ECR credential helper
(amazon-ecr-credential-helper), which takes the instance role's credentials: no registry
password exists anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from infra.tags import tags as stack_tags


@dataclass(frozen=True)
class AppRepositoriesArgs:
    sites: Sequence[str]  # the app sites whose image lives in the stack's ECR


class AppRepositories(pulumi.ComponentResource):
    """Declares `repositories` ({site: Repository}), `key`, `role` and `profile`."""

    repositories: dict[str, aws.ecr.Repository]
    key: aws.kms.Key
    role: aws.iam.Role
    profile: aws.iam.InstanceProfile

    def __init__(self, name: str, args: AppRepositoriesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:AppRepositories", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.key = aws.kms.Key("app-images-key", description="onionstack: the app sites' container images",
                               enable_key_rotation=True, deletion_window_in_days=30,
                               tags=stack_tags("app", "app-images"), opts=child)
        self.repositories = {}
        for site in args.sites:
            self.repositories[site] = aws.ecr.Repository(
                f"app-{site}-images",
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(
                    encryption_type="KMS", kms_key=self.key.arn)],
                force_delete=False,
                tags=stack_tags("app", f"app-{site}-images"), opts=child)
        self.role = aws.iam.Role(
            "app-image-pull",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
            tags=stack_tags("app", "app-image-pull"), opts=child)
        arns = [r.arn for r in self.repositories.values()]
        aws.iam.RolePolicy(
            "app-image-pull-policy", role=self.role.id,
            policy=pulumi.Output.all(*arns).apply(lambda repos: json.dumps({"Version": "2012-10-17", "Statement": [
                {"Sid": "Token", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                {"Sid": "Pull", "Effect": "Allow", "Resource": list(repos),
                 "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]},
            ]})), opts=child)
        self.profile = aws.iam.InstanceProfile("app-image-pull-profile", role=self.role.name,
                                              tags=stack_tags("app", "app-image-pull"), opts=child)
        self.register_outputs({"repositories": {s: r.repository_url for s, r in self.repositories.items()}})


__all__ = ["AppRepositories", "AppRepositoriesArgs"]
