"""infra.restore against moto's EC2 (volumes, snapshots, instances) and a botocore
Stubber for the AWS Backup call moto does not implement (ListRecoveryPointsByResource)."""
from __future__ import annotations

import datetime as dt

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from infra import restore
from infra.restore import RestoreError, Restorer

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
AMI = "ami-12c6146b"  # one of moto's built-in images
FIXED_NOW = dt.datetime(2026, 11, 22, 1, 2, 3, tzinfo=dt.timezone.utc)


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


@pytest.fixture
def stack(aws):
    """A stack-like database instance with an encrypted gp3 data volume at /dev/sdf,
    two snapshots of it (tagged as AWS Backup copies the volume's tags), one foreign."""
    ec2 = boto3.client("ec2", region_name=REGION)
    kms = boto3.client("kms", region_name=REGION)
    key_arn = kms.create_key(Description="stack ebs key")["KeyMetadata"]["Arn"]
    image = AMI
    inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.small",
                             Placement={"AvailabilityZone": f"{REGION}a"})["Instances"][0]["InstanceId"]
    # the tags infra/storage.py gives the database's volumes
    def stack_tags(purpose):
        return {"project": "onionstack", "stack": "prod", "role": "database", "purpose": purpose,
                "Name": f"onionstack-prod-database-{purpose}", "backup": "onionstack-prod"}
    vol_tags = stack_tags("data")
    vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=20, VolumeType="gp3", Iops=4000,
                            Throughput=250, Encrypted=True, KmsKeyId=key_arn,
                            TagSpecifications=[{"ResourceType": "volume", "Tags": [
                                {"Key": k, "Value": v} for k, v in vol_tags.items()]}])["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=inst, Device="/dev/sdf")
    snaps = []
    for i in range(2):
        snaps.append(ec2.create_snapshot(VolumeId=vol, Description=f"backup {i}", TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in vol_tags.items()]}])["SnapshotId"])
    # the journal volume: same role, own snapshots that must never count as the data volume's
    jtags = [{"Key": k, "Value": v} for k, v in stack_tags("journal").items()]
    other = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=4, VolumeType="gp3", Encrypted=True,
                              TagSpecifications=[{"ResourceType": "volume", "Tags": jtags}])["VolumeId"]
    ec2.attach_volume(VolumeId=other, InstanceId=inst, Device="/dev/sdg")
    foreign = ec2.create_snapshot(VolumeId=other, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": jtags}])["SnapshotId"]
    return {"ec2": ec2, "instance": inst, "volume": vol, "snapshots": snaps, "foreign": foreign,
            "key": key_arn, "tags": vol_tags, "other_volume": other}


def make(stack, backup=None, lines=None) -> Restorer:
    out = lines.append if lines is not None else (lambda s: None)
    return Restorer(stack["ec2"], backup, region=REGION, sts=boto3.client("sts", region_name=REGION),
                    out=out, waiter_delay=1, waiter_attempts=3, now=lambda: FIXED_NOW)


def world(ec2) -> dict:
    """Everything a restore could change: volumes (with attachments and tags), instance states."""
    vols = {v["VolumeId"]: (v["State"], tuple(sorted((a["InstanceId"], a["Device"], a["State"])
                                                     for a in v.get("Attachments", []))),
                            tuple(sorted(tags_of(v).items())))
            for v in ec2.describe_volumes()["Volumes"]}
    insts = {i["InstanceId"]: i["State"]["Name"]
             for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    return {"volumes": vols, "instances": insts}


# ---- happy path -----------------------------------------------------------------------

def test_full_restore_swaps_volume_and_keeps_old(stack):
    ec2, inst, old = stack["ec2"], stack["instance"], stack["volume"]
    snap = stack["snapshots"][0]
    lines: list[str] = []
    r = make(stack, lines=lines)
    vol = r.find_volume("database-data", stack="prod")
    assert vol.id == old and vol.instance_id == inst and vol.device == "/dev/sdf"
    plan = r.plan(vol, snap)
    new = r.execute(plan)
    assert new != old

    new_v = ec2.describe_volumes(VolumeIds=[new])["Volumes"][0]
    old_v = ec2.describe_volumes(VolumeIds=[old])["Volumes"][0]
    # same shape as the original
    assert new_v["AvailabilityZone"] == f"{REGION}a"
    assert (new_v["VolumeType"], new_v["Size"], new_v["Iops"], new_v["Throughput"]) == ("gp3", 20, 4000, 250)
    assert new_v["Encrypted"] is True and new_v["KmsKeyId"] == stack["key"]
    assert new_v["SnapshotId"] == snap
    nt = tags_of(new_v)
    for k, v in stack["tags"].items():
        assert nt[k] == v
    assert nt["restored-from"] == snap and nt["replaces"] == old
    assert nt["restored-at"] == "2026-11-22T01:02:03Z"
    # attached at the same device, old one detached, kept, tagged
    assert [(a["InstanceId"], a["Device"], a["State"]) for a in new_v["Attachments"]] == [(inst, "/dev/sdf", "attached")]
    assert old_v["State"] == "available" and old_v["Attachments"] == []
    ot = tags_of(old_v)
    assert ot["replaced-by"] == new and ot["detached-at"] == "2026-11-22T01:02:03Z"
    # instance running again, with the new volume in its block device mappings
    i = ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]
    assert i["State"]["Name"] == "running"
    assert {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in i["BlockDeviceMappings"]}["/dev/sdf"] == new
    assert any("stopping" in l for l in lines) and any("starting" in l for l in lines)
    assert f"verified: {inst} is running with {new} at /dev/sdf" in lines
    # the name now resolves to the restored volume (the replaced one is skipped)
    assert r.find_volume("onionstack-prod-database-data").id == new


def test_cli_restore_prints_what_changed(stack):
    out, err = [], []
    session = boto3.session.Session(region_name=REGION)
    rc = restore.main([stack["volume"], "--latest", "--region", REGION], session=session,
                      out=out.append, err=err.append)
    assert rc == 0, err
    text = "\n".join(out)
    new = stack["ec2"].describe_volumes(Filters=[{"Name": "tag:replaces", "Values": [stack["volume"]]}])["Volumes"][0]["VolumeId"]
    assert f"{stack['volume']} -> {new}" in text
    assert f"replaced-by={new}" in text
    assert "pulumi refresh" in text


def test_dry_run_changes_nothing(stack):
    ec2 = stack["ec2"]
    before = world(ec2)
    out, err = [], []
    rc = restore.main(["database-data", "--stack", "prod", "--snapshot", stack["snapshots"][1], "--dry-run"],
                      session=boto3.session.Session(region_name=REGION), out=out.append, err=err.append)
    assert rc == 0, err
    assert world(ec2) == before
    text = "\n".join(out)
    assert "dry run: nothing changed" in text
    assert f"from {stack['snapshots'][1]}" in text and "stop instance" in text and "/dev/sdf" in text


# ---- listing ----------------------------------------------------------------------------

def test_list_uses_aws_backup_and_ec2(stack):
    ec2 = stack["ec2"]
    backup = boto3.client("backup", region_name=REGION)
    s0, s1 = stack["snapshots"]
    arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/{stack['volume']}"
    with Stubber(backup) as stub:
        stub.add_response("list_recovery_points_by_resource", {"RecoveryPoints": [
            {"RecoveryPointArn": f"arn:aws:ec2:{REGION}::snapshot/{s1}", "Status": "COMPLETED",
             "BackupVaultName": "onionstack-prod", "CreationDate": FIXED_NOW},
            {"RecoveryPointArn": f"arn:aws:ec2:{REGION}::snapshot/snap-0123456789abcdef0", "Status": "COMPLETED",
             "BackupVaultName": "onionstack-prod", "CreationDate": FIXED_NOW},
        ]}, {"ResourceArn": arn})
        lines: list[str] = []
        r = make(stack, backup, lines)
        points = r.list_recovery_points(r.find_volume(stack["volume"]))
        stub.assert_no_pending_responses()
    by_id = {p.snapshot_id: p for p in points}
    assert set(by_id) == {s0, s1}           # the foreign snapshot is not listed
    assert by_id[s1].vault == "onionstack-prod" and by_id[s1].recovery_point_arn.endswith(s1)
    assert by_id[s0].vault is None          # EC2 knows it, AWS Backup does not
    assert any("snap-0123456789abcdef0" in l and "no such snapshot" in l for l in lines)
    text = restore.format_points(r.find_volume(stack["volume"]), points)
    assert "vault onionstack-prod" in text and "EC2 only" in text


def test_cli_list(stack):
    out, err = [], []
    rc = restore.main(["database-data", "--stack", "prod", "--list"],
                      session=boto3.session.Session(region_name=REGION), out=out.append, err=err.append)
    assert rc == 0, err
    text = "\n".join(out)
    assert "recovery points of" in text and "onionstack-prod-database-data" in text
    for snap in stack["snapshots"]:
        assert f"{snap}  completed 20 GiB  EC2 only" in text
    assert stack["foreign"] not in text           # the journal volume's snapshot
    # moto has no ListRecoveryPointsByResource: the CLI says so and falls back to EC2
    assert any("AWS Backup listing unavailable" in l for l in out)


def test_list_falls_back_when_backup_api_fails(stack):
    backup = boto3.client("backup", region_name=REGION)
    with Stubber(backup) as stub:
        stub.add_client_error("list_recovery_points_by_resource", "AccessDeniedException", "no backup:List*")
        lines: list[str] = []
        r = make(stack, backup, lines)
        points = r.list_recovery_points(r.find_volume(stack["volume"]))
    assert {p.snapshot_id for p in points} == set(stack["snapshots"])
    assert any("AccessDeniedException" in l and "EC2 snapshots only" in l for l in lines)


def test_recovery_point_arn_is_accepted(stack):
    r = make(stack)
    snap = stack["snapshots"][1]
    plan = r.plan(r.find_volume(stack["volume"]), f"arn:aws:ec2:{REGION}::snapshot/{snap}")
    assert plan.snapshot.snapshot_id == snap


def test_snapshots_found_by_tags_after_an_earlier_restore(stack):
    """After one restore the volume id changed; the old volume's backups still count."""
    r = make(stack)
    first = r.execute(r.plan(r.find_volume(stack["volume"]), stack["snapshots"][0]))
    points = r.list_recovery_points(r.find_volume(first))
    assert set(stack["snapshots"]) <= {p.snapshot_id for p in points}


# ---- failures -----------------------------------------------------------------------------

def test_attach_failure_rollback(stack, monkeypatch):
    ec2, inst, old = stack["ec2"], stack["instance"], stack["volume"]
    n_volumes = len(ec2.describe_volumes()["Volumes"])
    deleted = []
    monkeypatch.setattr(ec2, "delete_volume", lambda **kw: deleted.append(kw))

    def broken_attach(**kwargs):
        raise ClientError({"Error": {"Code": "IncorrectState", "Message": "injected attach failure"}}, "AttachVolume")
    monkeypatch.setattr(ec2, "attach_volume", broken_attach)

    r = make(stack)
    plan = r.plan(r.find_volume(old), stack["snapshots"][0])
    with pytest.raises(RestoreError) as info:
        r.execute(plan)
    e = info.value
    assert "attach new volume" in str(e) and "injected attach failure" in str(e)
    assert deleted == []
    vols = ec2.describe_volumes()["Volumes"]
    assert len(vols) == n_volumes + 1        # the new one exists, nothing was deleted
    new = next(v for v in vols if tags_of(v).get("replaces") == old)
    assert new["State"] == "available"
    old_v = ec2.describe_volumes(VolumeIds=[old])["Volumes"][0]
    assert old_v["State"] == "available" and tags_of(old_v)["replaced-by"] == new["VolumeId"]
    i = ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]
    assert i["State"]["Name"] == "stopped"   # stopped where it failed, not started half-done
    rb = "\n".join(e.rollback)
    assert f"aws ec2 attach-volume --volume-id {old} --instance-id {inst} --device /dev/sdf --region {REGION}" in rb
    assert f"aws ec2 start-instances --instance-ids {inst} --region {REGION}" in rb
    assert f"delete-tags --resources {old}" in rb
    assert "delete-volume" not in "\n".join(l for l in e.rollback if not l.startswith("#"))

    # The printed rollback commands really roll back: replay them with boto3.
    monkeypatch.undo()
    ec2.attach_volume(VolumeId=old, InstanceId=inst, Device="/dev/sdf")
    ec2.delete_tags(Resources=[old], Tags=[{"Key": "replaced-by"}, {"Key": "detached-at"}])
    ec2.start_instances(InstanceIds=[inst])
    assert r.find_volume("database-data", stack="prod").id == old


def test_cli_failure_prints_rollback(stack, monkeypatch, capsys):
    """The CLI reports a failed step and the rollback on stderr, exit 1."""
    real_session = boto3.session.Session(region_name=REGION)

    class Session:
        region_name = REGION

        def client(self, name):
            c = real_session.client(name)
            if name == "ec2":
                def stop_fails(**kw):
                    raise ClientError({"Error": {"Code": "UnsupportedOperation", "Message": "injected stop failure"}},
                                      "StopInstances")
                c.stop_instances = stop_fails
            if name == "backup":
                stub = Stubber(c)
                stub.add_client_error("list_recovery_points_by_resource", "ServiceUnavailable", "down")
                stub.activate()
            return c

    out, err = [], []
    rc = restore.main([stack["volume"], "--latest"], session=Session(), out=out.append, err=err.append)
    assert rc == 1
    text = "\n".join(err)
    assert "step 'stop instance' failed: UnsupportedOperation: injected stop failure" in text
    assert "To roll back" in text and "delete-volume" in text  # only as the operator's own choice
    old_v = stack["ec2"].describe_volumes(VolumeIds=[stack["volume"]])["Volumes"][0]
    assert old_v["Attachments"][0]["State"] == "attached"


def test_unknown_snapshot(stack):
    r = make(stack)
    with pytest.raises(RestoreError, match=r"snapshot 'snap-00000000000000000' not found in us-east-1"):
        r.plan(r.find_volume(stack["volume"]), "snap-00000000000000000")


def test_snapshot_of_another_volume_refused(stack):
    r = make(stack)
    vol = r.find_volume(stack["volume"])
    with pytest.raises(RestoreError, match=r"not a recovery point .* --any-snapshot"):
        r.plan(vol, stack["foreign"])
    assert r.plan(vol, stack["foreign"], any_snapshot=True).snapshot.snapshot_id == stack["foreign"]


def test_bad_snapshot_reference(stack):
    r = make(stack)
    with pytest.raises(RestoreError, match="neither a snapshot id"):
        r.plan(r.find_volume(stack["volume"]), "backup-from-tuesday")


def test_unknown_volume(stack):
    r = make(stack)
    with pytest.raises(RestoreError, match=r"volume 'vol-0000000000000000f' not found in us-east-1"):
        r.find_volume("vol-0000000000000000f")
    with pytest.raises(RestoreError, match=r"no volume named 'nope' .* in stack 'prod'"):
        r.find_volume("nope", stack="prod")


def test_volume_names(stack):
    ec2 = stack["ec2"]
    r = make(stack)
    assert r.find_volume("onionstack-prod-database-data").id == stack["volume"]
    assert r.find_volume("database-journal").id == stack["other_volume"]
    # the role is shared by the database's three volumes
    with pytest.raises(RestoreError, match=r"'database' matches 2 volumes .*pass the volume id"):
        r.find_volume("database")
    # the same name in two stacks needs --stack
    ec2.create_volume(AvailabilityZone=f"{REGION}b", Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": "onionstack-staging-database-data"},
                                            {"Key": "stack", "Value": "staging"}]}])
    with pytest.raises(RestoreError, match=r"'database-data' matches 2 volumes .* --stack"):
        r.find_volume("database-data")
    assert r.find_volume("database-data", stack="prod").id == stack["volume"]


def test_backup_tag_matches_the_stack(monkeypatch):
    """restore derives the backup tag the way infra/tags.py sets it."""
    import pulumi
    from infra import tags as stack_tags
    monkeypatch.setattr(pulumi, "get_project", lambda: "onionstack")
    monkeypatch.setattr(pulumi, "get_stack", lambda: "prod")
    t = stack_tags.tags("database", "database-data", purpose="data")
    assert restore.BACKUP_TAG_KEY == stack_tags.BACKUP_TAG_KEY
    assert restore.backup_tag_value(t) == stack_tags.backup_tag_value()
    assert {restore.NAME_TAG, restore.STACK_TAG, restore.ROLE_TAG, restore.PROJECT_TAG} <= set(t)


def test_wrong_az(stack):
    """A detached volume aimed at an instance in another AZ is refused before any change."""
    ec2 = stack["ec2"]
    image = AMI
    other = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": f"{REGION}b"})["Instances"][0]["InstanceId"]
    ec2.detach_volume(VolumeId=stack["volume"], InstanceId=stack["instance"])
    before = world(ec2)
    r = make(stack)
    vol = r.find_volume(stack["volume"])
    with pytest.raises(RestoreError, match=r"wrong AZ: .* is in us-east-1a but instance .* is in us-east-1b"):
        r.plan(vol, stack["snapshots"][0], instance_id=other, device="/dev/sdf")
    with pytest.raises(RestoreError, match="not attached to an instance; pass --instance"):
        r.plan(vol, stack["snapshots"][0])
    assert world(ec2) == before


def test_detached_volume_restores_to_given_instance(stack):
    ec2, inst = stack["ec2"], stack["instance"]
    ec2.detach_volume(VolumeId=stack["volume"], InstanceId=stack["instance"])
    r = make(stack)
    with pytest.raises(RestoreError, match="device /dev/sdg is already in use"):
        r.plan(r.find_volume(stack["volume"]), stack["snapshots"][0], instance_id=inst, device="/dev/sdg")
    plan = r.plan(r.find_volume(stack["volume"]), stack["snapshots"][0], instance_id=inst, device="/dev/sdi")
    new = r.execute(plan)
    att = ec2.describe_volumes(VolumeIds=[new])["Volumes"][0]["Attachments"]
    assert [(a["InstanceId"], a["Device"]) for a in att] == [(inst, "/dev/sdi")]


def test_stopped_instance_stays_stopped(stack):
    ec2, inst = stack["ec2"], stack["instance"]
    ec2.stop_instances(InstanceIds=[inst])
    r = make(stack)
    plan = r.plan(r.find_volume(stack["volume"]), stack["snapshots"][0])
    assert not any(s.startswith("stop instance") for s in plan.steps())
    r.execute(plan)
    i = ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]
    assert i["State"]["Name"] == "stopped"


def test_no_choice_of_point_is_an_error(stack):
    r = make(stack)
    with pytest.raises(RestoreError, match="choose a recovery point"):
        r.plan(r.find_volume(stack["volume"]))


# ---- reconciling the Pulumi state --------------------------------------------------------

def exported_state(old: str, inst: str) -> dict:
    """The shape of `pulumi stack export` for the database volume, its attachment and a
    bootstrap command whose triggers name the volume."""
    comp = "urn:pulumi:prod::onionstack::onionstack:nodes:DatabaseNode$onionstack:infra:AttachedVolumes::database-volumes"
    vol_urn = comp.replace("::database-volumes", "$aws:ebs/volume:Volume::database-volumes-data")
    att_urn = comp.replace("::database-volumes", "$aws:ec2/volumeAttachment:VolumeAttachment::database-volumes-data-attach")
    return {"version": 3, "deployment": {"manifest": {"time": "x"}, "resources": [
        {"urn": comp, "custom": False, "type": "onionstack:infra:AttachedVolumes"},
        {"urn": vol_urn, "custom": True, "id": old, "type": "aws:ebs/volume:Volume", "protect": True,
         "inputs": {"size": 20, "type": "gp3"},
         "outputs": {"id": old, "arn": f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/{old}", "snapshotId": ""}},
        {"urn": att_urn, "custom": True, "id": "vai-1234", "type": "aws:ec2/volumeAttachment:VolumeAttachment",
         "inputs": {"volumeId": old, "instanceId": inst, "deviceName": "/dev/sdf"},
         "outputs": {"volumeId": old}, "dependencies": [vol_urn],
         "propertyDependencies": {"volumeId": [vol_urn]}},
        {"urn": "urn:pulumi:prod::onionstack::command:remote:Command::db-bootstrap", "custom": True, "id": "cmd",
         "inputs": {"triggers": [inst, old], "stdin": {"4dabf18193072939515e22adb298388d":
                                                       "1b47061264138c4ac30d75fd1eb44270",
                                                       "ciphertext": f"v1:{old}-lookalike"}}},
    ]}}


def test_rewrite_state_points_the_stack_at_the_restored_volume(tmp_path):
    old, new, inst = "vol-0aaaaaaaaaaaaaaaa", "vol-0bbbbbbbbbbbbbbbb", "i-0123"
    state_file = tmp_path / "state.json"
    import json
    state_file.write_text(json.dumps(exported_state(old, inst)))
    out, err = [], []
    rc = restore.main([old, "--rewrite-state", str(state_file), "--new", new], out=out.append, err=err.append)
    assert rc == 0, err
    state = json.loads(state_file.read_text())
    vol, att, cmd = state["deployment"]["resources"][1:]
    assert vol["id"] == new and vol["outputs"]["id"] == new and vol["outputs"]["arn"].endswith(f"volume/{new}")
    assert vol["protect"] is True and vol["urn"].endswith("::database-volumes-data")   # same logical name
    assert att["inputs"]["volumeId"] == new and att["outputs"]["volumeId"] == new
    assert cmd["inputs"]["triggers"] == [inst, new]                    # triggers see no change
    assert cmd["inputs"]["stdin"]["ciphertext"] == f"v1:{old}-lookalike"  # secrets untouched
    assert old not in json.dumps(state).replace(f"v1:{old}-lookalike", "")
    assert json.loads((tmp_path / "state.json.before-restore").read_text()) == exported_state(old, inst)
    assert "rewrote 6 references" in out[0] and "pulumi stack import --file" in out[1]
    # running it again is refused, and says why
    rc = restore.main([old, "--rewrite-state", str(state_file), "--new", new], out=out.append, err=err.append)
    assert rc == 1 and "already names the new volume" in err[-1]


def test_rewrite_state_errors(tmp_path):
    f = tmp_path / "s.json"
    f.write_text('{"not": "a state"}')
    err = []
    assert restore.main(["vol-1", "--rewrite-state", str(f), "--new", "vol-2"], out=print, err=err.append) == 1
    assert "not an exported Pulumi stack" in err[-1]
    assert restore.main(["vol-1", "--rewrite-state", str(f)], out=print, err=err.append) == 2
    assert "needs --new" in err[-1]
    assert restore.main(["vol-1", "--rewrite-state", str(f), "--new", "snap-2"], out=print, err=err.append) == 1
    assert "'snap-2' is not a volume id" in err[-1]


def _raiser(code, op):
    def f(**kwargs):
        raise ClientError({"Error": {"Code": code, "Message": f"injected {op} failure"}}, op)
    return f


def test_create_failure_changes_nothing(stack, monkeypatch):
    ec2 = stack["ec2"]
    before = world(ec2)
    monkeypatch.setattr(ec2, "create_volume", _raiser("KMS.DisabledException", "CreateVolume"))
    r = make(stack)
    with pytest.raises(RestoreError) as info:
        r.execute(r.plan(r.find_volume(stack["volume"]), stack["snapshots"][0]))
    assert "step 'create volume' failed: KMS.DisabledException" in str(info.value)
    assert info.value.rollback == []                    # nothing to undo
    assert world(ec2) == before


def test_start_failure_rollback_goes_back_to_the_old_volume(stack, monkeypatch):
    ec2, inst, old = stack["ec2"], stack["instance"], stack["volume"]
    monkeypatch.setattr(ec2, "start_instances", _raiser("InsufficientInstanceCapacity", "StartInstances"))
    r = make(stack)
    with pytest.raises(RestoreError) as info:
        r.execute(r.plan(r.find_volume(old), stack["snapshots"][0]))
    rb = [l for l in info.value.rollback if not l.startswith("#")]
    new = next(v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if tags_of(v).get("replaces") == old)
    assert rb[:4] == [f"aws ec2 stop-instances --instance-ids {inst} --region {REGION}",
                      f"aws ec2 wait instance-stopped --instance-ids {inst} --region {REGION}",
                      f"aws ec2 detach-volume --volume-id {new} --region {REGION}",
                      f"aws ec2 wait volume-available --volume-ids {new} --region {REGION}"]
    assert f"aws ec2 attach-volume --volume-id {old} --instance-id {inst} --device /dev/sdf --region {REGION}" in rb
    assert rb[-1] == f"aws ec2 start-instances --instance-ids {inst} --region {REGION}"
    assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} >= {old, new}   # both kept
