"""The site as one component: its parts are components that declare what others read (no
attribute is set on a component from outside it), and another Pulumi program can declare
the same site."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pulumi
import pytest

import mockrun
from tests.stackmocks import prod_config, run


def _our_component_classes() -> list[type]:
    import infra
    import nodes

    classes = []
    for package in (infra, nodes):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, pulumi.ComponentResource) and obj.__module__ == module.__name__:
                    classes.append(obj)
    return classes


class SetFromOutside(AssertionError):
    pass


@pytest.fixture
def sealed_components(monkeypatch):
    """Every component of ours refuses new attributes once its own constructor returned."""
    classes = _our_component_classes()
    assert {"OnionSite", "WorkerSetup", "BalancerCore", "WorkerNode", "Network"} <= {c.__name__ for c in classes}
    for cls in classes:
        original = cls.__init__

        def init(self, *args, __original=original, __cls=cls, **kwargs):
            __original(self, *args, **kwargs)
            if type(self) is __cls:  # a subclass's constructor may still be running
                object.__setattr__(self, "_sealed", True)

        monkeypatch.setattr(cls, "__init__", init)

    def setattr_(self, name, value):
        if getattr(self, "_sealed", False):
            raise SetFromOutside(f"{type(self).__name__}.{name} set from outside the component")
        object.__setattr__(self, name, value)

    monkeypatch.setattr(pulumi.ComponentResource, "__setattr__", setattr_, raising=False)
    return classes


def test_no_attribute_is_set_on_a_component_from_outside_it(sealed_components):
    result = mockrun.run_program(prod_config())
    built = {r.type for r in result.resources if not r.custom}
    assert {"onionstack:site:OnionSite", "onionstack:nodes:BalancerCore", "onionstack:nodes:WorkerDrain"} <= built


def test_the_sealing_catches_an_attribute_set_from_outside(sealed_components):
    from nodes.site import OnionSite, OnionSiteArgs

    def program():
        from infra.config import load_config

        site = OnionSite("onionstack", OnionSiteArgs(load_config()))
        site.balancer.core_step = site.balancer_core  # what the composition used to do

    with pytest.raises(SetFromOutside, match="BalancerNode.core_step set from outside"):
        mockrun.run_program(prod_config(), program=program)


def test_another_program_declares_the_same_site():
    """An OnionSite inside another program's own component: the same resources (under one
    more parent) and the same outputs as the stack's own program."""
    from infra.config import load_config
    from nodes.site import OnionSite, OnionSiteArgs

    class Platform(pulumi.ComponentResource):
        def __init__(self, name: str):
            super().__init__("example:index:Platform", name, None, None)
            self.site = OnionSite("news-site", OnionSiteArgs(load_config()), opts=pulumi.ResourceOptions(parent=self))
            self.register_outputs({})

    def program():
        platform = Platform("platform")
        pulumi.export("sites", platform.site.exports["sites"])
        pulumi.export("instanceAddresses", platform.site.exports["instanceAddresses"])
        pulumi.export("balancerPublicIp", platform.site.exports["balancerPublicIp"])

    own = run(prod_config())
    other = mockrun.run_program(prod_config(), program=program)
    assert other.counts() == own.counts()
    core = other.named("balancer-core")
    assert [a.name for a in other.ancestors(core)][-3:-1] == ["news-site", "platform"]
    for key in ("sites", "instanceAddresses", "balancerPublicIp"):
        assert other.outputs[key] == own.outputs[key], key


def test_the_stack_outputs_are_the_sites_exports():
    """`__main__.py` exports exactly what the site declares (config -> OnionSite -> exports)."""
    from nodes.site import OnionSite

    result = run(prod_config())
    (site,) = result.of_type("onionstack:site:OnionSite")
    assert site.name == "onionstack" and site.parent == result.of_type("pulumi:pulumi:Stack")[0].urn
    assert set(result.outputs) == {
        "vpcId", "availabilityZones", "balancerPublicIp", "balancerPrivateIp", "workerPrivateIps", "sshBalancer",
        "sshWorkers", "databasePrivateIp", "sshDatabase", "backupVaultName", "keptOnDestroy", "sites",
        "instanceAddresses", "balancerPublishes", "introPoints", "alarmTopicArn", "onionLocation",
        "deployerSecurityGroupId", "databaseCaCertificate", "sshKnownHosts", "adminSshPrivateKey",
        "adminSshPublicKey"}
    assert "exports" in OnionSite.__annotations__
