"""Instances: AMI lookup, IMDSv2, encrypted roots, key pair, types, and the bootstrap seam."""
from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pytest

import mockrun
from tests.stackmocks import minimal_config, prod_config, run, ssh_pair

INSTANCE = "aws:ec2/instance:Instance"


@pytest.mark.parametrize("config", [minimal_config(workers=3), prod_config()], ids=["minimal", "prod"])
def test_every_instance_is_hardened(config):
    result = run(config)
    instances = result.of_type(INSTANCE)
    assert instances
    for inst in instances:
        meta = inst.input("metadataOptions")
        assert meta["httpTokens"] == "required" and meta["httpEndpoint"] == "enabled", inst.name
        assert meta["httpPutResponseHopLimit"] == 1
        root = inst.input("rootBlockDevice")
        assert root["encrypted"] is True and root["volumeType"] == "gp3", inst.name
        assert not inst.input("ebsBlockDevices")
        # The only user data is the host key's cloud-config, a secret (tests/test_host_keys.py).
        assert mockrun.is_secret(inst.inputs["userData"]) and inst.input("userData").startswith("#cloud-config\n")
        assert inst.input("userDataReplaceOnChange") is True


def test_ami_is_looked_up_never_hard_coded():
    result = run(minimal_config())
    (call,) = [args for token, args in result.invokes if token == "aws:ec2/getAmi:getAmi"]
    assert call["owners"] == ["099720109477"] and call["mostRecent"] is True
    assert {"name": "name", "values": ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]} in call["filters"]
    assert {"name": "architecture", "values": ["x86_64"]} in call["filters"]
    for inst in result.of_type(INSTANCE):
        assert inst.input("ami") == mockrun.MOCK_AMI_IDS["x86_64"]
        assert "ami" in inst.ignore_changes  # a new weekly AMI must not replace the fleet
    # One architecture lookup per distinct instance type (t3.micro, t3.small).
    looked_up = sorted(a["instanceType"] for t, a in result.invokes if t == "aws:ec2/getInstanceType:getInstanceType")
    assert looked_up == ["t3.micro", "t3.small"]


def test_graviton_types_get_the_arm64_image():
    result = run(minimal_config(workers=2, instanceTypes={"worker": "t4g.small"}))
    amis = {(i.input("tags")["role"], i.input("ami")) for i in result.of_type(INSTANCE)}
    assert amis == {("balancer", mockrun.MOCK_AMI_IDS["x86_64"]), ("database", mockrun.MOCK_AMI_IDS["x86_64"]),
                    ("worker", mockrun.MOCK_AMI_IDS["arm64"])}
    names = sorted(next(f["values"][0] for f in a["filters"] if f["name"] == "name")
                   for t, a in result.invokes if t == "aws:ec2/getAmi:getAmi")
    assert names == ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
                     "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-*"]


def test_one_key_pair_from_the_public_key_on_every_instance():
    result = run(minimal_config(workers=2))
    (pair,) = result.of_type("aws:ec2/keyPair:KeyPair")
    assert pair.input("publicKey") == ssh_pair()[0]
    assert {i.input("keyName") for i in result.of_type(INSTANCE)} == {pair.state["keyName"]}


def test_instance_types_per_role():
    result = run(minimal_config(workers=2, instanceTypes={"worker": "c7i.large", "database": "r7i.large"}))
    types = {(i.input("tags")["role"], i.input("instanceType")) for i in result.of_type(INSTANCE)}
    assert types == {("balancer", "t3.micro"), ("worker", "c7i.large"), ("database", "r7i.large")}


def test_nodes_are_components_owning_their_instance():
    result = run(minimal_config(workers=2))
    for component, count in [("onionstack:nodes:BalancerNode", 1), ("onionstack:nodes:WorkerNode", 2),
                             ("onionstack:nodes:DatabaseNode", 1)]:
        nodes = result.of_type(component)
        assert len(nodes) == count
        for node in nodes:
            kids = [c for c in result.children(node.urn) if c.type == INSTANCE]
            assert len(kids) == 1 and kids[0].name == f"{node.name}-instance"


# ---------------------------------------------------------------- the seam between nodes and steps
def test_a_step_declared_elsewhere_nests_under_its_node_and_waits_until_it_is_ready():
    """A node declares how a step reaches it (`ssh`) and what a step waits for (`ready`);
    a step from another module, declared as the node's child, nests under it, waits for
    the instance (and the database's volume attachments), reaches it at its address, the
    private ones through the balancer, and may be declared after other nodes' steps."""
    from pulumi_command import remote

    from infra.storage import database_volume_specs
    from nodes.balancer import BalancerNode, BalancerNodeArgs
    from nodes.database import DatabaseNode, DatabaseNodeArgs
    from nodes.instance import InstanceArgs
    from nodes.remote import connection
    from nodes.worker import WorkerNode, WorkerNodeArgs

    key = pulumi.Output.secret("not-a-real-key")

    def hello(node, *after):
        return remote.Command(f"{node.node_name}-hello", connection=connection(node.ssh, key), create="true",
                              opts=pulumi.ResourceOptions(parent=node, depends_on=[*node.ready, *after]))

    def program():
        def args(role, public_ip=False):
            return InstanceArgs(role=role, instance_type="t3.small", ami_id="ami-x", public_ip=public_ip,
                                subnet_id=subnet.id, security_group_ids=[], key_name="k")
        vpc = aws.ec2.Vpc("v", cidr_block="10.0.0.0/16")
        subnet = aws.ec2.Subnet("s", vpc_id=vpc.id, cidr_block="10.0.1.0/24", availability_zone="us-east-1a")
        balancer = BalancerNode("b", BalancerNodeArgs(instance=args("balancer", public_ip=True)))
        worker = WorkerNode("w", WorkerNodeArgs(instance=args("worker"), jump=balancer.ssh))
        database = DatabaseNode("d", DatabaseNodeArgs(instance=args("database"), availability_zone="us-east-1a",
                                                      volumes=database_volume_specs(1, 1, 1), jump=balancer.ssh,
                                                      protect_data=False))
        on_worker = hello(worker)
        hello(database)
        hello(balancer, on_worker)  # a balancer step that needs a worker's, declared after it

    result = mockrun.run_program(minimal_config(), program=program)
    late = result.named("b-hello")
    assert late.parent == result.named("b").urn
    assert result.named("w-hello").urn in late.dependencies
    assert result.named("b-instance").urn in late.dependencies
    assert late.input("connection")["host"] == result.named("b-eip").state["publicIp"]
    assert "proxy" not in late.input("connection")
    for node_name in ("w", "d"):
        step = result.named(f"{node_name}-hello")
        assert step.parent == result.named(node_name).urn
        assert result.named(f"{node_name}-instance").urn in step.dependencies
        conn = step.input("connection")
        assert conn["host"] == result.named(f"{node_name}-instance").state["privateIp"]
        assert conn["proxy"]["host"] == result.named("b-eip").state["publicIp"]
    db_step = result.named("d-hello")
    for purpose in ("data", "journal", "log"):
        assert result.named(f"d-volumes-{purpose}-attach").urn in db_step.dependencies


def test_private_roles_refuse_a_public_ip():
    from nodes.instance import InstanceArgs
    from nodes.remote import SshTarget
    from nodes.worker import WorkerNode, WorkerNodeArgs

    def program():
        WorkerNode("w", WorkerNodeArgs(
            instance=InstanceArgs(role="worker", instance_type="t3.small", ami_id="ami-x", subnet_id="s",
                                  security_group_ids=[], key_name="k", public_ip=True),
            jump=SshTarget(host="203.0.113.9")))

    with pytest.raises(ValueError, match="workers accept nothing from the internet"):
        mockrun.run_program(minimal_config(), program=program)
