"""The onionstack-security policy pack: `pulumi preview --policy-pack policy` (and `pulumi up
--policy-pack policy`) run it against what the program declares. The policies are in
onionstack_policies.py (importable without starting the pack's gRPC server, for the tests)."""
from pulumi_policy import PolicyPack

from onionstack_policies import ENFORCEMENT, POLICIES

PolicyPack(name="onionstack-security", policies=POLICIES, enforcement_level=ENFORCEMENT)
