"""Restore a stack volume from an AWS Backup recovery point (EBS snapshot).

    python -m infra.restore VOLUME --list [--region R]
    python -m infra.restore VOLUME (--snapshot SNAP | --recovery-point ARN | --latest) [--dry-run]

VOLUME is a volume id (`vol-…`), its `Name` tag (`onionstack-prod-database-data`), that
name without the `<project>-<stack>-` prefix (`database-data`, narrowed with `--stack`),
or its `role` tag when that is unique. The restore, in the order EBS needs: create a
volume from the snapshot in the instance's AZ (same type, size, IOPS/throughput,
encryption and KMS key, the original's tags plus `restored-from`), stop the instance,
detach the old volume (kept and tagged `replaced-by`), attach the new one at the same
device, start the instance again. Every step is checked; on failure it stops and prints
the exact commands that roll back. It never deletes a volume.

Plain boto3 (no pulumi import) so it runs from any operator machine; the Pulumi state is
reconciled afterwards with `pulumi refresh` (docs/operations.md).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

# Tags the stack puts on its volumes (infra/tags.py, infra/storage.py): Name
# `<project>-<stack>-<role>-<purpose>`, project, stack, role, purpose, and the backup tag
# BACKUP_TAG_KEY=`<project>-<stack>` the backup selection matches. Kept as plain strings
# (infra.tags imports pulumi); tests check they agree with infra.tags.
BACKUP_TAG_KEY = "backup"
PROJECT_TAG = "project"
STACK_TAG = "stack"
ROLE_TAG = "role"
NAME_TAG = "Name"


def backup_tag_value(volume_tags: dict[str, str]) -> str | None:
    """The backup tag value the stack gives this volume (infra.tags.backup_tag_value)."""
    if PROJECT_TAG in volume_tags and STACK_TAG in volume_tags:
        return f"{volume_tags[PROJECT_TAG]}-{volume_tags[STACK_TAG]}"
    return None

# Tags this tool writes.
RESTORED_FROM_TAG = "restored-from"
RESTORED_AT_TAG = "restored-at"
REPLACES_TAG = "replaces"
REPLACED_BY_TAG = "replaced-by"
DETACHED_AT_TAG = "detached-at"

# Volume types whose IOPS / throughput are settable (and must be carried over).
IOPS_TYPES = {"io1", "io2", "gp3"}
THROUGHPUT_TYPES = {"gp3"}


class RestoreError(Exception):
    """A restore step failed or its input is wrong. `rollback` lists shell commands that
    undo what was already done (empty when nothing changed)."""

    def __init__(self, message: str, rollback: Iterable[str] = ()):
        super().__init__(message)
        self.rollback = list(rollback)


@dataclass(frozen=True)
class Volume:
    id: str
    az: str
    type: str
    size: int
    iops: int | None
    throughput: int | None
    encrypted: bool
    kms_key_id: str | None
    state: str
    tags: dict[str, str]
    instance_id: str | None
    device: str | None

    @classmethod
    def from_api(cls, v: dict) -> "Volume":
        attached = [a for a in v.get("Attachments", []) if a.get("State") in ("attached", "attaching")]
        return cls(
            id=v["VolumeId"],
            az=v["AvailabilityZone"],
            type=v.get("VolumeType", "gp2"),
            size=int(v["Size"]),
            iops=v.get("Iops"),
            throughput=v.get("Throughput"),
            encrypted=bool(v.get("Encrypted")),
            kms_key_id=v.get("KmsKeyId"),
            state=v.get("State", "?"),
            tags={t["Key"]: t["Value"] for t in v.get("Tags", [])},
            instance_id=attached[0]["InstanceId"] if attached else None,
            device=attached[0]["Device"] if attached else None,
        )

    def label(self) -> str:
        name = self.tags.get(NAME_TAG)
        return f"{self.id} ({name})" if name else self.id


@dataclass(frozen=True)
class RecoveryPoint:
    snapshot_id: str
    created: _dt.datetime | None
    status: str                 # snapshot state (completed/pending/error) or AWS Backup status
    size_gb: int | None
    encrypted: bool | None
    source_volume: str | None
    recovery_point_arn: str | None = None   # set when AWS Backup lists it
    vault: str | None = None

    @property
    def usable(self) -> bool:
        return self.status.lower() in ("completed",)


@dataclass
class RestorePlan:
    volume: Volume
    snapshot: RecoveryPoint
    instance_id: str
    instance_state: str
    instance_az: str
    device: str
    region: str
    new_volume_args: dict
    notes: list[str] = field(default_factory=list)

    def steps(self) -> list[str]:
        a = self.new_volume_args
        extras = []
        if "Iops" in a:
            extras.append(f"iops {a['Iops']}")
        if "Throughput" in a:
            extras.append(f"throughput {a['Throughput']} MiB/s")
        enc = f"encrypted with {a.get('KmsKeyId', 'the default EBS key')}" if a.get("Encrypted") else "NOT encrypted"
        steps = [
            f"create a {a['Size']} GiB {a['VolumeType']} volume from {self.snapshot.snapshot_id} in "
            f"{self.instance_az}{', ' + ', '.join(extras) if extras else ''}, {enc}, with the tags of "
            f"{self.volume.id} plus {RESTORED_FROM_TAG}={self.snapshot.snapshot_id}",
        ]
        if self.instance_state != "stopped":
            steps.append(f"stop instance {self.instance_id} and wait until it is stopped")
        if self.volume.instance_id:
            steps.append(f"detach {self.volume.label()} from {self.instance_id} {self.device} and wait; tag it "
                         f"{REPLACED_BY_TAG}=<new volume>, {DETACHED_AT_TAG}=<time> (it is kept, never deleted)")
        else:
            steps.append(f"tag the (already detached) {self.volume.label()} {REPLACED_BY_TAG}=<new volume> "
                         f"(it is kept, never deleted)")
        steps.append(f"attach the new volume to {self.instance_id} at {self.device} and wait")
        if self.instance_state != "stopped":
            steps.append(f"start instance {self.instance_id} and wait until it is running")
        else:
            steps.append(f"leave instance {self.instance_id} stopped (it was stopped before)")
        return steps


def _client_error_text(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return str(exc)


def _tags_filter(tags: dict[str, str]) -> list[dict]:
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]


class Restorer:
    """The restore procedure over boto3 clients (injected, so tests pass moto/Stubber
    clients). `out` receives every progress line."""

    def __init__(self, ec2, backup=None, *, region: str, sts=None, out: Callable[[str], None] = print,
                 backup_tag: tuple[str, str | None] | None = None,
                 waiter_delay: int = 5, waiter_attempts: int = 120,
                 now: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)):
        self.ec2 = ec2
        self.backup = backup
        self.sts = sts
        self.region = region
        self.out = out
        self.backup_tag = backup_tag
        self.waiter_config = {"Delay": waiter_delay, "MaxAttempts": waiter_attempts}
        self.now = now

    # ---- finding things -------------------------------------------------------------

    def find_volume(self, ref: str, stack: str | None = None) -> Volume:
        """A volume by id, or by its `role`/`Name` tag (optionally within one stack).
        Volumes already replaced by a restore (tagged `replaced-by`) are skipped when
        resolving a tag, so the name keeps pointing at the volume in service."""
        if ref.startswith("vol-"):
            try:
                vols = self.ec2.describe_volumes(VolumeIds=[ref])["Volumes"]
            except ClientError as exc:
                raise RestoreError(f"volume {ref!r} not found in {self.region} ({_client_error_text(exc)}); "
                                   f"check the id and --region") from None
            return Volume.from_api(vols[0])
        found: dict[str, Volume] = {}
        # the Name itself, the Name without its `<project>-<stack>-` prefix, or the role
        for tag, value in ((NAME_TAG, ref), (NAME_TAG, f"*-{ref}"), (ROLE_TAG, ref)):
            filters = [{"Name": f"tag:{tag}", "Values": [value]}]
            if stack:
                filters.append({"Name": f"tag:{STACK_TAG}", "Values": [stack]})
            for page in self.ec2.get_paginator("describe_volumes").paginate(Filters=filters):
                for v in page["Volumes"]:
                    vol = Volume.from_api(v)
                    if REPLACED_BY_TAG not in vol.tags:
                        found[vol.id] = vol
        if not found:
            where = f" in stack {stack!r}" if stack else ""
            raise RestoreError(f"no volume named {ref!r} (tag {NAME_TAG}, {NAME_TAG} suffix or {ROLE_TAG}){where} "
                               f"in {self.region}; "
                               f"pass a volume id (vol-…) or check --region/--stack")
        if len(found) > 1:
            # e.g. a restored volume left unattached by a failed restore: the attached one
            # is the one in service.
            attached = [v for v in found.values() if v.instance_id]
            stacks = {v.tags.get(STACK_TAG) for v in found.values()}
            if len(attached) == 1 and len(stacks) == 1:
                return attached[0]
            listing = ", ".join(f"{v.label()} stack={v.tags.get(STACK_TAG, '?')}" for v in found.values())
            raise RestoreError(f"{ref!r} matches {len(found)} volumes ({listing}); pass the volume id or --stack")
        return next(iter(found.values()))

    def list_recovery_points(self, volume: Volume) -> list[RecoveryPoint]:
        """Recovery points of `volume`, newest first.

        AWS Backup's ListRecoveryPointsByResource is asked first (it knows vaults and
        statuses); EC2 snapshots of the same volume id, and snapshots carrying the
        volume's stack/role and backup tags (which AWS Backup copies from the volume, so
        they survive an earlier restore that changed the volume id), are merged in. A
        snapshot AWS Backup lists but EC2 no longer has is left out with a note."""
        by_snap: dict[str, RecoveryPoint] = {}
        backup_points: dict[str, dict] = {}
        if self.backup is not None:
            try:
                arn = self._volume_arn(volume.id)
                for page in self.backup.get_paginator("list_recovery_points_by_resource").paginate(ResourceArn=arn):
                    for rp in page.get("RecoveryPoints", []):
                        snap = rp["RecoveryPointArn"].rsplit("/", 1)[-1]
                        if snap.startswith("snap-"):
                            backup_points[snap] = rp
            except (ClientError, BotoCoreError) as exc:
                self.out(f"note: AWS Backup listing unavailable ({_client_error_text(exc)}); using EC2 snapshots only")

        snaps: dict[str, dict] = {}
        owner = {"OwnerIds": ["self"]}
        queries = [[{"Name": "volume-id", "Values": [volume.id]}]]
        # A restored volume keeps its Name (and stack), so Name+stack+backup tag also finds
        # the backups of the volumes it replaced. (role alone is shared by a machine's
        # several volumes: database data/journal/log.)
        lineage = {k: volume.tags[k] for k in (NAME_TAG, STACK_TAG) if k in volume.tags}
        if len(lineage) == 2:
            key, value = self.backup_tag or (BACKUP_TAG_KEY, backup_tag_value(volume.tags))
            tag_query = _tags_filter(lineage)
            tag_query.append({"Name": f"tag:{key}", "Values": [value]} if value else {"Name": "tag-key", "Values": [key]})
            queries.append(tag_query)
        for filters in queries:
            for page in self.ec2.get_paginator("describe_snapshots").paginate(Filters=filters, **owner):
                for s in page["Snapshots"]:
                    snaps[s["SnapshotId"]] = s
        if backup_points:
            missing = [s for s in backup_points if s not in snaps]
            if missing:
                try:
                    found = self.ec2.describe_snapshots(SnapshotIds=missing)["Snapshots"]
                except ClientError:
                    found = []
                for s in found:
                    snaps[s["SnapshotId"]] = s
                for s in set(missing) - {s["SnapshotId"] for s in found}:
                    self.out(f"note: AWS Backup lists {s} but EC2 has no such snapshot; skipped")

        for sid, s in snaps.items():
            rp = backup_points.get(sid)
            by_snap[sid] = RecoveryPoint(
                snapshot_id=sid,
                created=s.get("StartTime"),
                status=s.get("State", "?"),
                size_gb=s.get("VolumeSize"),
                encrypted=s.get("Encrypted"),
                source_volume=s.get("VolumeId"),
                recovery_point_arn=rp["RecoveryPointArn"] if rp else None,
                vault=rp.get("BackupVaultName") if rp else None,
            )
        epoch = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
        return sorted(by_snap.values(), key=lambda p: p.created or epoch, reverse=True)

    def _volume_arn(self, volume_id: str) -> str:
        account = self._account()
        return f"arn:aws:ec2:{self.region}:{account}:volume/{volume_id}"

    def _account(self) -> str:
        # AWS Backup wants the volume's full ARN, which includes the account id.
        if self.sts is None:
            raise RestoreError("internal: an STS client is needed to build the volume ARN for AWS Backup")
        return self.sts.get_caller_identity()["Account"]

    def _instance(self, instance_id: str) -> dict:
        try:
            res = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as exc:
            raise RestoreError(f"instance {instance_id!r} not found ({_client_error_text(exc)})") from None
        return res[0]["Instances"][0]

    # ---- planning -------------------------------------------------------------------

    def plan(self, volume: Volume, snapshot_ref: str | None = None, *, latest: bool = False,
             instance_id: str | None = None, device: str | None = None,
             any_snapshot: bool = False) -> RestorePlan:
        snapshot_id = _snapshot_id(snapshot_ref) if snapshot_ref else None
        points = self.list_recovery_points(volume)
        if latest:
            usable = [p for p in points if p.usable]
            if not usable:
                raise RestoreError(f"{volume.label()} has no completed recovery point; see --list")
            point = usable[0]
        elif snapshot_id:
            point = next((p for p in points if p.snapshot_id == snapshot_id), None)
            if point is None:
                point = self._foreign_snapshot(snapshot_id, volume, any_snapshot)
        else:
            raise RestoreError("choose a recovery point: --snapshot snap-…, --recovery-point ARN or --latest")
        if not point.usable:
            raise RestoreError(f"snapshot {point.snapshot_id} is {point.status!r}, not completed; choose another (--list)")

        inst_id = volume.instance_id or instance_id
        if volume.instance_id and instance_id and instance_id != volume.instance_id:
            raise RestoreError(f"{volume.label()} is attached to {volume.instance_id}, not {instance_id}; "
                               f"drop --instance or pass the instance it is attached to")
        if not inst_id:
            raise RestoreError(f"{volume.label()} is not attached to an instance; pass --instance and --device "
                               f"to say where the restored volume goes")
        dev = volume.device or device
        if not dev:
            raise RestoreError(f"{volume.label()} is not attached: pass --device (e.g. /dev/sdf)")
        inst = self._instance(inst_id)
        inst_az = inst["Placement"]["AvailabilityZone"]
        inst_state = inst["State"]["Name"]
        if inst_az != volume.az:
            raise RestoreError(f"wrong AZ: {volume.label()} is in {volume.az} but instance {inst_id} is in "
                               f"{inst_az}; a volume only attaches within its AZ. Pass the instance this "
                               f"volume belongs to")
        if inst_state not in ("running", "stopped"):
            raise RestoreError(f"instance {inst_id} is {inst_state!r}; wait until it is running or stopped")
        if not volume.instance_id:
            used = {m["DeviceName"] for m in inst.get("BlockDeviceMappings", [])}
            if dev in used:
                raise RestoreError(f"device {dev} is already in use on {inst_id}; pass a free --device")

        notes = []
        size = volume.size
        if point.size_gb and point.size_gb > size:
            size = point.size_gb
            notes.append(f"snapshot is {point.size_gb} GiB, larger than the volume ({volume.size} GiB): using {size} GiB")
        encrypted = volume.encrypted or bool(point.encrypted)
        if encrypted and not volume.encrypted:
            notes.append("the snapshot is encrypted, so the restored volume is too (the original was not)")
        args: dict = {
            "SnapshotId": point.snapshot_id,
            "AvailabilityZone": inst_az,
            "VolumeType": volume.type,
            "Size": size,
            "Encrypted": encrypted,
        }
        if encrypted and volume.kms_key_id:
            args["KmsKeyId"] = volume.kms_key_id
        if volume.type in IOPS_TYPES and volume.iops:
            args["Iops"] = volume.iops
        if volume.type in THROUGHPUT_TYPES and volume.throughput:
            args["Throughput"] = volume.throughput
        tags = {k: v for k, v in volume.tags.items() if not k.startswith("aws:")
                and k not in (REPLACED_BY_TAG, DETACHED_AT_TAG)}
        tags[RESTORED_FROM_TAG] = point.snapshot_id
        tags[RESTORED_AT_TAG] = self.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        tags[REPLACES_TAG] = volume.id
        args["TagSpecifications"] = [{"ResourceType": "volume",
                                      "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        return RestorePlan(volume=volume, snapshot=point, instance_id=inst_id, instance_state=inst_state,
                           instance_az=inst_az, device=dev, region=self.region, new_volume_args=args, notes=notes)

    def _foreign_snapshot(self, snapshot_id: str, volume: Volume, any_snapshot: bool) -> RecoveryPoint:
        try:
            s = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        except ClientError as exc:
            raise RestoreError(f"snapshot {snapshot_id!r} not found in {self.region} "
                               f"({_client_error_text(exc)}); see --list for this volume's recovery points") from None
        if not any_snapshot:
            raise RestoreError(f"snapshot {snapshot_id} is not a recovery point of {volume.label()} (it was taken "
                               f"from {s.get('VolumeId', '?')}); pass --any-snapshot to restore it anyway")
        return RecoveryPoint(snapshot_id=snapshot_id, created=s.get("StartTime"), status=s.get("State", "?"),
                             size_gb=s.get("VolumeSize"), encrypted=s.get("Encrypted"),
                             source_volume=s.get("VolumeId"))

    # ---- doing ----------------------------------------------------------------------

    def _wait(self, name: str, **kwargs) -> None:
        self.ec2.get_waiter(name).wait(WaiterConfig=self.waiter_config, **kwargs)

    def execute(self, plan: RestorePlan) -> str:
        """Run the plan; returns the new volume id. Raises RestoreError with rollback
        commands on the first failed step. Never deletes anything."""
        r = f" --region {self.region}"
        old, inst, dev = plan.volume.id, plan.instance_id, plan.device
        was_running = plan.instance_state == "running"
        start_cmd = [f"aws ec2 start-instances --instance-ids {inst}{r}"] if was_running else []
        new_id: str | None = None
        leftover = []

        def fail(step: str, exc: Exception, rollback: list[str]) -> RestoreError:
            return RestoreError(f"step '{step}' failed: {_client_error_text(exc)}", rollback)

        # 1. create
        step = "create volume"
        try:
            self.out(f"creating volume from {plan.snapshot.snapshot_id} in {plan.instance_az} …")
            new_id = self.ec2.create_volume(**plan.new_volume_args)["VolumeId"]
            self._wait("volume_available", VolumeIds=[new_id])
            self._check_new_volume(new_id, plan)
            self.out(f"created {new_id}")
        except (ClientError, BotoCoreError, WaiterError, RestoreError) as exc:
            rb = []
            if new_id:
                rb.append(f"# nothing on the instance changed; the new volume {new_id} is unused: inspect it, "
                          f"then keep it or remove it yourself (aws ec2 delete-volume --volume-id {new_id}{r})")
            raise fail(step, exc, rb) from None
        leftover = [f"# the restored volume {new_id} stays (unattached); remove it yourself only once sure: "
                    f"aws ec2 delete-volume --volume-id {new_id}{r}"]

        # 2. stop
        if was_running:
            step = "stop instance"
            try:
                self.out(f"stopping {inst} …")
                self.ec2.stop_instances(InstanceIds=[inst])
                self._wait("instance_stopped", InstanceIds=[inst])
                self.out(f"stopped {inst}")
            except (ClientError, BotoCoreError, WaiterError) as exc:
                raise fail(step, exc, [f"aws ec2 wait instance-stopped --instance-ids {inst}{r}  # or it never stopped"]
                           + start_cmd + leftover) from None

        # 3. detach the old volume (kept)
        if plan.volume.instance_id:
            step = "detach old volume"
            try:
                self.out(f"detaching {old} from {inst} {dev} …")
                self.ec2.detach_volume(VolumeId=old, InstanceId=inst, Device=dev)
                self._wait("volume_available", VolumeIds=[old])
                self.out(f"detached {old} (kept)")
            except (ClientError, BotoCoreError, WaiterError) as exc:
                raise fail(step, exc, [f"aws ec2 describe-volumes --volume-ids {old}{r}  # if it shows "
                                       f"'available', reattach: aws ec2 attach-volume --volume-id {old} "
                                       f"--instance-id {inst} --device {dev}{r}"] + start_cmd + leftover) from None
        reattach_old = [f"aws ec2 attach-volume --volume-id {old} --instance-id {inst} --device {dev}{r}",
                        f"aws ec2 wait volume-in-use --volume-ids {old}{r}"] if plan.volume.instance_id else []
        untag_old = [f"aws ec2 delete-tags --resources {old} --tags Key={REPLACED_BY_TAG} Key={DETACHED_AT_TAG}{r}"]
        step = "tag old volume"
        try:
            self.ec2.create_tags(Resources=[old], Tags=[
                {"Key": REPLACED_BY_TAG, "Value": new_id},
                {"Key": DETACHED_AT_TAG, "Value": self.now().strftime("%Y-%m-%dT%H:%M:%SZ")}])
        except (ClientError, BotoCoreError) as exc:
            raise fail(step, exc, reattach_old + start_cmd + leftover) from None

        # 4. attach the new volume at the same device
        step = "attach new volume"
        try:
            self.out(f"attaching {new_id} to {inst} at {dev} …")
            self.ec2.attach_volume(VolumeId=new_id, InstanceId=inst, Device=dev)
            self._wait("volume_in_use", VolumeIds=[new_id])
            att = self.ec2.describe_volumes(VolumeIds=[new_id])["Volumes"][0].get("Attachments", [])
            if not any(a["InstanceId"] == inst and a["Device"] == dev and a["State"] == "attached" for a in att):
                raise RestoreError(f"{new_id} is not attached to {inst} at {dev} after waiting: {att}")
            self.out(f"attached {new_id} at {dev}")
        except (ClientError, BotoCoreError, WaiterError, RestoreError) as exc:
            rb = [f"aws ec2 describe-volumes --volume-ids {new_id}{r}  # if it is attached, detach it first: "
                  f"aws ec2 detach-volume --volume-id {new_id}{r} && aws ec2 wait volume-available "
                  f"--volume-ids {new_id}{r}"]
            raise fail(step, exc, rb + reattach_old + untag_old + start_cmd + leftover) from None

        # 5. start
        if was_running:
            step = "start instance"
            try:
                self.out(f"starting {inst} …")
                self.ec2.start_instances(InstanceIds=[inst])
                self._wait("instance_running", InstanceIds=[inst])
                self.out(f"started {inst}")
            except (ClientError, BotoCoreError, WaiterError) as exc:
                rb = [f"# the restored volume {new_id} is attached; to go back to the old one:",
                      f"aws ec2 stop-instances --instance-ids {inst}{r}",
                      f"aws ec2 wait instance-stopped --instance-ids {inst}{r}",
                      f"aws ec2 detach-volume --volume-id {new_id}{r}",
                      f"aws ec2 wait volume-available --volume-ids {new_id}{r}"]
                raise fail(step, exc, rb + reattach_old + untag_old + start_cmd + leftover) from None

        # 6. verify what the instance sees
        step = "verify"
        try:
            inst_now = self._instance(inst)
            mapped = {m["DeviceName"]: m.get("Ebs", {}).get("VolumeId") for m in inst_now.get("BlockDeviceMappings", [])}
            state = inst_now["State"]["Name"]
            want_state = "running" if was_running else "stopped"
            if mapped.get(dev) != new_id or state != want_state:
                raise RestoreError(f"instance {inst} shows {dev} -> {mapped.get(dev)} and state {state!r}; "
                                   f"expected {new_id} and {want_state!r}")
            self.out(f"verified: {inst} is {state} with {new_id} at {dev}")
        except (ClientError, BotoCoreError, RestoreError) as exc:
            raise fail(step, exc, [f"aws ec2 describe-instances --instance-ids {inst}{r}  # inspect before "
                                   f"rolling back; the old volume {old} is kept"] + leftover) from None
        return new_id

    def _check_new_volume(self, new_id: str, plan: RestorePlan) -> None:
        v = Volume.from_api(self.ec2.describe_volumes(VolumeIds=[new_id])["Volumes"][0])
        want = plan.new_volume_args
        wrong = []
        if v.az != plan.instance_az:
            wrong.append(f"AZ {v.az} != {plan.instance_az}")
        if v.type != want["VolumeType"]:
            wrong.append(f"type {v.type} != {want['VolumeType']}")
        if v.size != want["Size"]:
            wrong.append(f"size {v.size} != {want['Size']}")
        if v.encrypted != want["Encrypted"]:
            wrong.append(f"encrypted {v.encrypted} != {want['Encrypted']}")
        if "KmsKeyId" in want and v.kms_key_id != want["KmsKeyId"]:
            wrong.append(f"KMS key {v.kms_key_id} != {want['KmsKeyId']}")
        if v.tags.get(RESTORED_FROM_TAG) != plan.snapshot.snapshot_id:
            wrong.append(f"tag {RESTORED_FROM_TAG} missing")
        if wrong:
            raise RestoreError(f"new volume {new_id} does not match the plan: " + "; ".join(wrong))


def rewrite_state(state: dict, old_volume: str, new_volume: str) -> int:
    """Point an exported Pulumi state (`pulumi stack export`) at the restored volume.

    Every string in the stack's resources that names `old_volume` (the volume's id, ARN,
    the attachment's volumeId, command triggers…) is rewritten to `new_volume`, so after
    `pulumi stack import` the stack manages the restored volume under the same logical
    name and nothing that depended on the volume id sees a change. Encrypted secret
    values are left alone. Returns how many strings changed; refuses a state in which
    no resource has the old volume as its id. `pulumi refresh` then reads the restored
    volume's real properties (snapshot id, tags)."""
    resources = state.get("deployment", {}).get("resources")
    if not isinstance(resources, list):
        raise RestoreError("not an exported Pulumi stack (no deployment.resources); "
                           "make it with `pulumi stack export --file FILE`")
    owners = [r.get("urn") for r in resources if r.get("id") == old_volume]
    if len(owners) != 1:
        already = [r.get("urn") for r in resources if r.get("id") == new_volume]
        hint = " (it already names the new volume: nothing to do)" if already else ""
        raise RestoreError(f"{len(owners)} resources in the state have id {old_volume}, expected exactly 1"
                           f"{hint}; check the stack and the volume id")
    count = 0

    def walk(node):
        nonlocal count
        if isinstance(node, dict):
            if "ciphertext" in node:        # a secret: never touched
                return node
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and old_volume in node:
            count += 1
            return node.replace(old_volume, new_volume)
        return node

    state["deployment"]["resources"] = walk(resources)
    return count


def _rewrite_state_file(path: str, old_volume: str, new_volume: str, out) -> None:
    for v in (old_volume, new_volume):
        if not v.startswith("vol-"):
            raise RestoreError(f"{v!r} is not a volume id (vol-…)")
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    n = rewrite_state(state, old_volume, new_volume)
    backup = path + ".before-restore"
    shutil.copyfile(path, backup)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=4)
        f.write("\n")
    out(f"rewrote {n} references {old_volume} -> {new_volume} in {path} (original kept as {backup})")
    out(f"next: pulumi stack import --file {path} && pulumi refresh && pulumi preview")


def _snapshot_id(ref: str) -> str:
    """`snap-…` or an EBS recovery point ARN (`arn:aws:ec2:REGION::snapshot/snap-…`)."""
    sid = ref.rsplit("/", 1)[-1] if ref.startswith("arn:") else ref
    if not sid.startswith("snap-"):
        raise RestoreError(f"{ref!r} is neither a snapshot id (snap-…) nor an EBS recovery point ARN "
                           f"(arn:aws:ec2:REGION::snapshot/snap-…)")
    return sid


def format_points(volume: Volume, points: list[RecoveryPoint]) -> str:
    lines = [f"recovery points of {volume.label()} ({volume.size} GiB {volume.type}, {volume.az}), newest first:"]
    if not points:
        lines.append("  (none)")
    for p in points:
        when = p.created.strftime("%Y-%m-%d %H:%M UTC") if p.created else "?"
        origin = f"vault {p.vault}" if p.vault else "EC2 only"
        src = "" if p.source_volume == volume.id else f" from {p.source_volume}"
        lines.append(f"  {when}  {p.snapshot_id}  {p.status:<9} {p.size_gb or '?'} GiB  {origin}{src}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.restore", description=__doc__.splitlines()[0])
    p.add_argument("volume", help="volume id (vol-…), its Name tag (onionstack-prod-database-data), the Name "
                                  "without the project-stack prefix (database-data) or its role tag")
    p.add_argument("--region", help="AWS region (default: the AWS profile's)")
    p.add_argument("--stack", help="only volumes tagged stack=STACK (when resolving a role/Name)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="list the volume's recovery points")
    what.add_argument("--snapshot", help="restore this snapshot (snap-…)")
    what.add_argument("--recovery-point", help="restore this AWS Backup recovery point ARN")
    what.add_argument("--latest", action="store_true", help="restore the newest completed recovery point")
    what.add_argument("--rewrite-state", metavar="STATE.json",
                      help="after a restore: rewrite an exported Pulumi state (pulumi stack export) so the "
                           "stack manages the volume given by --new instead of VOLUME; no AWS calls")
    p.add_argument("--new", metavar="VOL", help="with --rewrite-state: the restored volume's id")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--instance", help="target instance when the volume is not attached")
    p.add_argument("--device", help="target device when the volume is not attached (e.g. /dev/sdf)")
    p.add_argument("--any-snapshot", action="store_true",
                   help="allow a snapshot that is not a recovery point of this volume")
    p.add_argument("--backup-tag",
                   help="KEY=VALUE (or KEY: any value) the backup plan selects volumes by "
                        f"(default {BACKUP_TAG_KEY}=<project>-<stack> from the volume's tags, as the stack sets it)")
    return p


def main(argv: list[str] | None = None, *, session=None, out=print, err=None) -> int:
    err = err or (lambda s: print(s, file=sys.stderr))
    args = build_parser().parse_args(argv)
    if args.rewrite_state:
        if not args.new:
            err("restore: --rewrite-state needs --new vol-… (the restored volume, see its old volume's "
                "replaced-by tag)")
            return 2
        try:
            _rewrite_state_file(args.rewrite_state, args.volume, args.new, out)
        except (RestoreError, OSError, ValueError) as exc:
            err(f"restore: {exc}")
            return 1
        return 0
    backup_tag = None
    if args.backup_tag:
        key, _, value = args.backup_tag.partition("=")
        backup_tag = (key, value or None)
    session = session or boto3.session.Session(region_name=args.region)
    region = session.region_name
    if not region:
        err("restore: no region: pass --region or set AWS_REGION / a profile region")
        return 2
    restorer = Restorer(session.client("ec2"), session.client("backup"), region=region,
                        sts=session.client("sts"), out=out,
                        backup_tag=backup_tag)
    try:
        volume = restorer.find_volume(args.volume, args.stack)
        if args.list:
            out(format_points(volume, restorer.list_recovery_points(volume)))
            return 0
        plan = restorer.plan(volume, args.snapshot or args.recovery_point, latest=args.latest,
                             instance_id=args.instance, device=args.device, any_snapshot=args.any_snapshot)
        out(f"restore plan for {volume.label()} on {plan.instance_id} {plan.device} "
            f"from {plan.snapshot.snapshot_id}:")
        for i, s in enumerate(plan.steps(), 1):
            out(f"  {i}. {s}")
        for n in plan.notes:
            out(f"  note: {n}")
        if args.dry_run:
            out("dry run: nothing changed")
            return 0
        new_id = restorer.execute(plan)
    except RestoreError as exc:
        err(f"restore: {exc}")
        if exc.rollback:
            err("restore: stopped. To roll back what was done, run:")
            for line in exc.rollback:
                err(f"  {line}")
        else:
            err("restore: nothing was changed")
        return 1
    out("restored. What changed:")
    out(f"  {plan.instance_id} {plan.device}: {volume.id} -> {new_id} (from {plan.snapshot.snapshot_id})")
    out(f"  {volume.id}: detached, kept, tagged {REPLACED_BY_TAG}={new_id}")
    out(f"  instance {plan.instance_id}: {'running again' if plan.instance_state == 'running' else 'left stopped'}")
    out("next: `pulumi refresh` for the stack, then see docs/operations.md 'After a restore'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
