"""Run the real `__main__.py` under Pulumi mocks: no CLI, no cloud account.

`run_program(config)` evaluates the program once with a fresh mock monitor in a fresh
context and returns every registered resource (type, name, inputs, parent, options) and
the stack outputs. Tests and the benchmark use it; `python -m mockrun` prints a
preview-like resource tree of a stack (default: Pulumi.prod.yaml), injecting throwaway
demo keys for the secrets a stack file cannot hold in plain text.

Mock facts this relies on: invokes must be answered (an unanswered one is an
error here, not a silent None); `preview=False` so `apply` callbacks run; inputs arrive
camelCased with secrets wrapped in a marker dict.
"""
from __future__ import annotations

import argparse
import base64
import contextvars
import hashlib
import ipaddress
import json
import re
import runpy
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pulumi  # noqa: E402
from pulumi.runtime import mocks as pulumi_mocks  # noqa: E402
from pulumi.runtime import settings as pulumi_settings  # noqa: E402
from pulumi.runtime.stack import run_pulumi_func  # noqa: E402
from pulumi.runtime.sync_await import _sync_await  # noqa: E402

PROJECT = "onionstack"
MAIN = ROOT / "__main__.py"
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # pulumi's secret marker key
DEFAULT_REGION = "us-east-1"
MOCK_AMI_IDS = {"x86_64": "ami-0mock0noble0amd64", "arm64": "ami-0mock0noble0arm64"}
MOCK_AMI_ID = MOCK_AMI_IDS["x86_64"]
DOCUMENTATION_NET = ipaddress.ip_network("203.0.113.0/24")  # RFC 5737: public IPs in mocks
# What the remote steps' providers would return (see StackMocks.new_resource).
WORKER_STEP_RE = re.compile(r"^worker-\d+-tor-nginx$")
OB_CONFIG_RE = re.compile(r"/tor/(?P<daemon>[^/]+)/hs/(?P<site>[^/]+)/ob_config$")


def mock_instance_address(step_name: str, daemon: str, site: str) -> str:
    """The instance address the emulated tor of `step_name` creates for (daemon, site):
    derived from the names, so the same program gets the same addresses every run."""
    from onion.keys import onion_address

    return onion_address(hashlib.sha256(f"{step_name}|{daemon}|{site}".encode()).digest())


def mock_host_key(name: str) -> dict[str, str]:
    """What pulumi-tls returns for an ED25519 `tls.PrivateKey` named `name`: the OpenSSH and
    PEM forms of a key derived from the name (the same program, the same keys)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"host-key|{name}".encode()).digest())
    public = key.public_key()
    openssh = public.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(openssh.split()[1])
    return {
        "privateKeyOpenssh": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                               ser.NoEncryption()).decode(),
        "privateKeyPem": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode(),
        "privateKeyPemPkcs8": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                                ser.NoEncryption()).decode(),
        "publicKeyOpenssh": openssh + "\n",
        "publicKeyPem": public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyFingerprintSha256": "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("="),
        "publicKeyFingerprintMd5": ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest()),
    }


def mock_password(name: str) -> str:
    return hashlib.sha256(f"password|{name}".encode()).hexdigest()[:32]


def mock_tls_key(name: str) -> str:
    """The PEM (PKCS#8) ECDSA P-256 key a mocked `tls.PrivateKey` named `name` holds:
    derived from the name, so tests can look for it where it must not be."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's group order
    scalar = int.from_bytes(hashlib.sha256(f"tls-key|{name}".encode()).digest(), "big") % (order - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# ---------------------------------------------------------------- recorded data
@dataclass
class MockedResource:
    type: str
    name: str
    urn: str
    parent: str  # parent URN ("" for the stack)
    custom: bool
    inputs: dict  # as the engine saw them: camelCase, secrets as marker dicts
    state: dict = field(default_factory=dict)
    id: str = ""
    protect: bool = False
    retain_on_delete: bool = False
    ignore_changes: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()

    def input(self, key: str, default: Any = None) -> Any:
        """An input with secret markers removed."""
        return reveal(self.inputs.get(key, default))


@dataclass
class ProgramResult:
    resources: list[MockedResource]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    invokes: list[tuple[str, dict]]
    seconds: float

    def of_type(self, type_: str) -> list[MockedResource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> MockedResource:
        found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}")
        return found[0]

    def by_urn(self, urn: str) -> MockedResource:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)

    def by_id(self, id_: str) -> MockedResource:
        for r in self.resources:
            if r.id == id_ and r.custom:
                return r
        raise KeyError(id_)

    def children(self, urn: str) -> list[MockedResource]:
        return [r for r in self.resources if r.parent == urn]

    def ancestors(self, r: MockedResource) -> list[MockedResource]:
        out = []
        while r.parent:
            r = self.by_urn(r.parent)
            out.append(r)
        return out

    def counts(self) -> Counter:
        return Counter(r.type for r in self.resources if r.custom)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"


def redact(value: Any) -> Any:
    """`value` with every secret marker replaced by "[secret]": what a log or a plain output
    may show."""
    if is_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def reveal(value: Any) -> Any:
    """`value` with every secret marker replaced by the value it wraps."""
    if is_secret(value):
        return reveal(value.get("value"))
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


# ---------------------------------------------------------------- mocks
class StackMocks(pulumi_mocks.Mocks):
    """Answers every invoke the program makes and gives resources plausible outputs,
    including what the remote steps would report (a worker step's instance addresses, a
    generated password), so the balancer's config renders as it would on AWS."""

    def __init__(self, region: str = DEFAULT_REGION, zone_count: int = 6):
        self.region = region
        self.zones = [f"{region}{chr(ord('a') + i)}" for i in range(zone_count)]
        self.invokes: list[tuple[str, dict]] = []
        self._subnets: dict[str, tuple[ipaddress.IPv4Network, str]] = {}
        self._subnet_vpcs: dict[str, str] = {}
        # Ids and addresses derive from resource names, not registration order (which
        # varies between runs), so the same program prints the same tree and outputs.
        self._taken: set[str] = set()

    def call(self, args: pulumi_mocks.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {
                "id": self.region,
                "names": list(self.zones),
                "zoneIds": [f"use1-az{i + 1}" for i in range(len(self.zones))],
                "groupNames": [self.region] * len(self.zones),
            }
        if args.token == "aws:ec2/getAmi:getAmi":
            arch = next(f["values"][0] for f in args.args["filters"] if f["name"] == "architecture")
            ami = MOCK_AMI_IDS[arch]
            return {
                "id": ami,
                "imageId": ami,
                "name": f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{'amd64' if arch == 'x86_64' else arch}-server-20261101",
                "architecture": arch,
                "ownerId": "099720109477",
                "rootDeviceType": "ebs",
                "virtualizationType": "hvm",
            }
        if args.token == "aws:ec2/getInstanceType:getInstanceType":
            itype = args.args["instanceType"]
            # Graviton families have a "g" right after the generation digit (t4g, m7gd, c7gn).
            arch = "arm64" if re.match(r"^[a-z]+\d+g[a-z]*\.", itype) else "x86_64"
            return {"id": itype, "instanceType": itype, "supportedArchitectures": [arch]}
        if args.token == "aws:index/getPartition:getPartition":
            return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws"}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"id": "000000000000", "accountId": "000000000000", "userId": "AROAMOCKDEPLOYROLE:ci",
                    "arn": "arn:aws:sts::000000000000:assumed-role/deploy/ci"}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            # What AWS answers for a subnet the program (or the program embedding the site) made.
            sid = args.args.get("id")
            if sid not in self._subnets:
                raise ValueError(f"no matching EC2 Subnet found (mock: {sid!r} was never created)")
            net, zone = self._subnets[sid]
            return {"id": sid, "vpcId": self._subnet_vpcs[sid], "cidrBlock": str(net), "availabilityZone": zone,
                    "arn": f"arn:aws:ec2:{self.region}:000000000000:subnet/{sid}", "mapPublicIpOnLaunch": False}
        if args.token == "aws:index/getRegion:getRegion":
            return {"id": self.region, "name": self.region, "region": self.region}
        # An unanswered invoke would silently yield None: make it loud instead.
        raise NotImplementedError(f"mockrun: no mock answer for invoke {args.token}")

    @staticmethod
    def _digest(*parts: str) -> int:
        return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")

    def _id(self, prefix: str, type_: str, name: str) -> str:
        return f"{prefix}-{self._digest(type_, name):016x}"[: len(prefix) + 18]

    def _address(self, net: ipaddress.IPv4Network, name: str, first: int = 10) -> str:
        """A stable free host address in `net` for `name` (reserved low addresses skipped)."""
        span = net.num_addresses - first - 1
        start = self._digest(str(net), name) % span
        for step in range(span):
            ip = str(net.network_address + first + (start + step) % span)
            if ip not in self._taken:
                self._taken.add(ip)
                return ip
        raise RuntimeError(f"mock subnet {net} is full")

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        inputs = dict(args.inputs)
        state = dict(inputs)
        t = args.typ
        prefix = {
            "aws:ec2/vpc:Vpc": "vpc",
            "aws:ec2/subnet:Subnet": "subnet",
            "aws:ec2/instance:Instance": "i",
            "aws:ec2/securityGroup:SecurityGroup": "sg",
            "aws:ec2/internetGateway:InternetGateway": "igw",
            "aws:ec2/natGateway:NatGateway": "nat",
            "aws:ec2/eip:Eip": "eipalloc",
            "aws:ec2/routeTable:RouteTable": "rtb",
            "aws:ebs/volume:Volume": "vol",
            "aws:ec2/keyPair:KeyPair": "key",
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr",
            "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr",
        }.get(t, t.split(":")[-1].lower())
        id_ = self._id(prefix, t, args.name)
        state["arn"] = f"arn:aws:mock:{self.region}:000000000000:{prefix}/{id_}"
        if t == "aws:ec2/subnet:Subnet":
            self._subnets[id_] = (ipaddress.ip_network(inputs["cidrBlock"]), inputs.get("availabilityZone"))
            self._subnet_vpcs[id_] = reveal(inputs.get("vpcId"))
        elif t == "aws:ec2/instance:Instance":
            net, zone = self._subnets[reveal(inputs["subnetId"])]
            state["privateIp"] = self._address(net, args.name)
            state["availabilityZone"] = zone
            state["publicIp"] = self._address(DOCUMENTATION_NET, args.name) if inputs.get("associatePublicIpAddress") else ""
        elif t == "aws:ec2/eip:Eip":
            state["publicIp"] = self._address(DOCUMENTATION_NET, args.name)
        elif t == "aws:ec2/keyPair:KeyPair":
            state["keyName"] = inputs.get("keyName") or f"{inputs.get('keyNamePrefix', '')}{id_}"
        elif t == "aws:cloudwatch/logGroup:LogGroup":
            # Policies name log groups (and their streams) by this ARN form.
            state["arn"] = f"arn:aws:logs:{self.region}:000000000000:log-group:{inputs.get('name') or args.name}"
        elif t == "aws:kms/key:Key":
            state["keyId"] = id_
        elif t in ("aws:backup/vault:Vault", "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            state["name"] = inputs.get("name") or f"{args.name}-{id_[-7:]}"
        elif t == "aws:sns/topic:Topic":
            state["name"] = inputs.get("name") or f"{args.name}-{id_[-7:]}"
            state["arn"] = f"arn:aws:sns:{self.region}:000000000000:{state['name']}"
        elif t == "command:remote:Command":
            state.setdefault("stdout", "")
            state.setdefault("stderr", "")
            if WORKER_STEP_RE.match(args.name):
                state["stdout"] = self._worker_step_stdout(args.name, inputs)
        elif t == "random:index/randomPassword:RandomPassword":
            state["result"] = mock_password(args.name)
        elif t == "tls:index/privateKey:PrivateKey" and inputs.get("algorithm") == "ED25519":
            state.update(mock_host_key(args.name))  # a machine's SSH host key (nodes/hostkey.py)
        elif t == "aws:ecr/repository:Repository":
            state["name"] = inputs.get("name") or f"{args.name}-{id_[-7:]}"
            state["registryId"] = "000000000000"
            state["repositoryUrl"] = f"000000000000.dkr.ecr.{self.region}.amazonaws.com/{state['name']}"
        elif t.startswith("tls:index/"):
            state.update(mock_tls_state(t, args.name, reveal(inputs)))
        return id_, state

    @staticmethod
    def _worker_step_stdout(step_name: str, inputs: dict) -> str:
        """What a worker's tor-nginx step prints once tor created the instance keys: one
        `onionstack-instance SITE DAEMON ADDRESS` line per ob_config in its payload."""
        from nodes.payload import unpack
        from nodes.scripts import ADDRESS_LINE

        lines = []
        for path in sorted(unpack(reveal(inputs["stdin"]))):
            m = OB_CONFIG_RE.search(path)
            if m:
                addr = mock_instance_address(step_name, m["daemon"], m["site"])
                lines.append(f"{ADDRESS_LINE} {m['site']} {m['daemon']} {addr}")
        return "packages: installed\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- pulumi-tls, emulated
# Real keys and certificates (cryptography), derived from the resource names and inputs
# and signed deterministically (RFC 6979), so the same program gives the same PEMs on every
# run (a second `up` is a no-op) and tests can verify chains, names and key matches.
TLS_EPOCH = (2026, 1, 1)


mock_tls_private_key = mock_tls_key  # the same key derivation


def _tls_subject(subject: Optional[dict]):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subject = subject or {}
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"])] if subject.get("commonName") else []
    if subject.get("organization"):
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]))
    return x509.Name(attrs)


def _tls_extensions(builder, inputs: dict, public_key, issuer_key=None):
    """basicConstraints, keyUsage, extendedKeyUsage and subject key id as pulumi-tls sets them."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    uses = set(inputs.get("allowedUses") or [])
    builder = builder.add_extension(x509.BasicConstraints(ca=bool(inputs.get("isCaCertificate")), path_length=None),
                                    critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature="digital_signature" in uses, content_commitment=False,
        key_encipherment="key_encipherment" in uses, data_encipherment=False, key_agreement=False,
        key_cert_sign="cert_signing" in uses, crl_sign="crl_signing" in uses, encipher_only=False,
        decipher_only=False), critical=True)
    eku = [oid for use, oid in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
                                ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH)) if use in uses]
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),
                                        critical=False)
    return builder


def _tls_sans(inputs: dict) -> list:
    from cryptography import x509

    return ([x509.DNSName(n) for n in inputs.get("dnsNames") or []]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []])


def mock_tls_state(type_: str, name: str, inputs: dict) -> dict:
    """The outputs pulumi-tls gives a PrivateKey, SelfSignedCert, CertRequest or
    LocallySignedCert with `inputs` (camelCase, secrets already revealed)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    pem = serialization.Encoding.PEM
    if type_ == "tls:index/privateKey:PrivateKey":
        key_pem = mock_tls_private_key(name)
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        return {"privateKeyPem": key_pem, "privateKeyPemPkcs8": key_pem, "algorithm": inputs.get("algorithm"),
                "publicKeyPem": key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo
                                                              ).decode()}
    if type_ == "tls:index/certRequest:CertRequest":
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), password=None)
        builder = x509.CertificateSigningRequestBuilder().subject_name(_tls_subject(inputs.get("subject")))
        if _tls_sans(inputs):
            builder = builder.add_extension(x509.SubjectAlternativeName(_tls_sans(inputs)), critical=False)
        csr = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        return {"certRequestPem": csr.public_bytes(pem).decode()}
    start = datetime.datetime(*TLS_EPOCH, tzinfo=datetime.timezone.utc)
    end = start + datetime.timedelta(hours=int(inputs["validityPeriodHours"]))
    serial = int.from_bytes(hashlib.sha256(f"tls-serial|{name}".encode()).digest()[:16], "big") >> 1
    if type_ == "tls:index/selfSignedCert:SelfSignedCert":
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), password=None)
        subject = issuer = _tls_subject(inputs.get("subject"))
        public, signer, issuer_public = key.public_key(), key, None
        sans = _tls_sans(inputs)
    elif type_ == "tls:index/locallySignedCert:LocallySignedCert":
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        signer = serialization.load_pem_private_key(inputs["caPrivateKeyPem"].encode(), password=None)
        subject, issuer, public, issuer_public = csr.subject, ca.subject, csr.public_key(), ca.public_key()
        try:
            sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
    else:
        raise NotImplementedError(f"mockrun: pulumi-tls resource {type_} is not emulated")
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
               .serial_number(serial).not_valid_before(start).not_valid_after(end))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = _tls_extensions(builder, inputs, public, issuer_public).sign(signer, hashes.SHA256(),
                                                                      ecdsa_deterministic=True)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {"certPem": cert.public_bytes(pem).decode(), "validityStartTime": start.strftime(stamp),
            "validityEndTime": end.strftime(stamp), "readyForRenewal": False}


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """A mock monitor that also keeps each registration's parent and options."""

    def __init__(self, mocks: StackMocks):
        super().__init__(mocks)
        self.recorded: list[MockedResource] = []

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """The URN the engine gives a resource: the parent's whole qualified type chain, then
        its own type (the root stack's type is left out). Pulumi's MockMonitor keeps only the
        parent's last type, which makes URNs that no real stack holds (aliases are checked
        against real ones: tests/test_site_aliases.py)."""
        qualified = type_
        if parent:
            parent_type = parent.split("::")[2]
            if parent_type != "pulumi:pulumi:Stack":
                qualified = f"{parent_type}${type_}"
        return "urn:pulumi:" + "::".join([pulumi.get_stack(), pulumi.get_project(), qualified, name])

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        from pulumi.runtime import rpc

        inputs = rpc.deserialize_properties(request.object) if request.type != "pulumi:pulumi:Stack" else {}
        state = {}
        if request.custom:
            state = self.resources[response.urn].state
        self.recorded.append(
            MockedResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                custom=bool(request.custom),
                inputs=inputs,
                state=dict(state),
                id=response.id,
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                ignore_changes=tuple(request.ignoreChanges),
                dependencies=tuple(request.dependencies),
            )
        )
        return response


# ---------------------------------------------------------------- running
def encode_config(config: Mapping[str, Any], project: str = PROJECT) -> dict[str, str]:
    """Pulumi config as the engine passes it: namespaced keys, every value a string."""
    out = {}
    for key, value in config.items():
        full = key if ":" in key else f"{project}:{key}"
        out[full] = value if isinstance(value, str) else json.dumps(value)
    return out


def run_program(
    config: Mapping[str, Any],
    *,
    stack: str = "prod",
    preview: bool = False,
    secret_keys: Optional[Iterable[str]] = None,
    program: Optional[Callable[[], Any]] = None,
    project: str = PROJECT,
) -> ProgramResult:
    """Evaluate the real `__main__.py` (or `program`) once with `config`.

    Config keys may be bare (`workers`, taken as `onionstack:workers`) or namespaced
    (`aws:region`). A fresh `contextvars.Context` gives each run its own root stack,
    config and settings; a fresh monitor gives it its own resource registry. An exception
    from the program propagates with `.registered_resources` (what was declared before it).
    """
    from infra.config import SECRET_KEYS

    encoded = encode_config(config, project)
    if secret_keys is None:
        secret_keys = [f"{PROJECT}:{k}" for k in SECRET_KEYS if f"{PROJECT}:{k}" in encoded]
    if program is None:
        program = run_main
    return contextvars.Context().run(_run, encoded, list(secret_keys), stack, preview, program, project)


def run_main() -> None:
    runpy.run_path(str(MAIN), run_name="__main__")


def _run(config: dict[str, str], secret_keys: list[str], stack: str, preview: bool,
         program: Callable[[], Any], project: str = PROJECT) -> ProgramResult:
    from pulumi.runtime import config as runtime_config

    region = config.get("aws:region", DEFAULT_REGION)
    mocks = StackMocks(region)
    monitor = RecordingMonitor(mocks)
    runtime_config.set_all_config(dict(config), secret_keys)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview, monitor=monitor)
    started = time.perf_counter()
    try:
        _sync_await(run_pulumi_func(program))
    except Exception as exc:
        exc.registered_resources = [r for r in monitor.recorded if r.type != "pulumi:pulumi:Stack"]
        raise
    outputs, secret = _sync_await(_resolve_outputs(pulumi_settings.get_root_resource().outputs))
    elapsed = time.perf_counter() - started
    return ProgramResult(monitor.recorded, outputs, secret, mocks.invokes, elapsed)


async def _resolve_outputs(raw: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    values, secret = {}, set()
    for name, value in raw.items():
        out = pulumi.Output.from_input(value)
        values[name] = await out.future()
        if await out.is_secret():
            secret.add(name)
    return values, secret


# ---------------------------------------------------------------- demo stack
def load_stack_file(stack: str) -> dict[str, Any]:
    """The `config:` of Pulumi.<stack>.yaml (plain values; secure ones are left out)."""
    import yaml

    path = ROOT / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name} (stacks here: "
                                f"{', '.join(p.name for p in ROOT.glob('Pulumi.*.yaml'))})")
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in (data.get("config") or {}).items() if not (isinstance(v, dict) and "secure" in v)}


def demo_master_key(name: str) -> str:
    """A throwaway site key in the masterKeys form, derived from the site name.

    tor's expanded key is SHA-512 of a 32-byte seed with the scalar half clamped
    (RFC 8032 5.1.5), which is what `python -m onion keygen` produces from a random seed.
    """
    expanded = bytearray(hashlib.sha512(b"onionstack-demo-seed:" + name.encode()).digest())
    expanded[0] &= 248
    expanded[31] &= 127
    expanded[31] |= 64
    return "ED25519-V3:" + base64.b64encode(bytes(expanded)).decode()


def demo_ssh_key_pair() -> tuple[str, str]:
    """A fresh throwaway (public line, private PEM) ed25519 pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{public} onionstack-demo", private


def with_demo_secrets(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`config` plus demo values for the secrets it lacks; returns what was injected."""
    cfg = dict(config)
    injected = []
    ns = f"{PROJECT}:"
    sites = cfg.get(f"{ns}sites") or []
    if f"{ns}masterKeys" not in cfg:
        cfg[f"{ns}masterKeys"] = {s["name"]: demo_master_key(s["name"]) for s in sites if isinstance(s, dict) and "name" in s}
        injected.append("masterKeys (demo site keys derived from the site names)")
    # No SSH key: the program makes the admin key itself (tls.PrivateKey, mocked here).
    return cfg, injected


# ---------------------------------------------------------------- printing
def render_tree(result: ProgramResult) -> str:
    by_parent: dict[str, list[MockedResource]] = defaultdict(list)
    for r in result.resources:
        by_parent[r.parent].append(r)
    lines: list[str] = []

    def label(r: MockedResource) -> str:
        flags = []
        if r.protect:
            flags.append("protected")
        if r.retain_on_delete:
            flags.append("retained on delete")
        extra = f"  [{', '.join(flags)}]" if flags else ""
        return f"{r.type}  {r.name}{extra}"

    def order(r: MockedResource) -> tuple:
        # Own resources first, then sub-components; by type, then name with numbers in order.
        natural = tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", r.name))
        return (not r.custom, r.type, natural)

    def walk(parent: str, prefix: str) -> None:
        kids = sorted(by_parent.get(parent, []), key=order)
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{label(r)}")
            walk(r.urn, prefix + ("   " if last else "│  "))

    for root in by_parent.get("", []):
        lines.append(label(root))
        walk(root.urn, "")
    return "\n".join(lines)


def render_summary(result: ProgramResult) -> str:
    counts = result.counts()
    components = Counter(r.type for r in result.resources if not r.custom and r.type != "pulumi:pulumi:Stack")
    lines = [f"Resources: {sum(counts.values())} cloud resources, {sum(components.values())} components"]
    for t, n in sorted(counts.items()):
        lines.append(f"  {n:4d}  {t}")
    remote = sorted((r for r in result.resources if r.type in ("command:remote:Command", "command:remote:CopyToRemote")),
                    key=lambda r: r.name)
    if remote:
        lines.append("Remote steps (SSH user@host, the host key it must present; via the jump host):")
        for r in remote:
            conn = r.input("connection") or {}
            where = f"{conn.get('user')}@{conn.get('host')} [{_key_id(conn.get('hostKey'))}]"
            proxy = conn.get("proxy")
            if proxy:
                where += f" via {proxy.get('user')}@{proxy.get('host')} [{_key_id(proxy.get('hostKey'))}]"
            lines.append(f"  {r.name}: {where}")
    lines.append("Outputs:")
    for name in sorted(result.outputs):
        value = "[secret]" if name in result.secret_outputs else json.dumps(result.outputs[name], indent=None)
        lines.append(f"  {name}: {value}")
    return "\n".join(lines)


def _key_id(public_key: Optional[str]) -> str:
    """A host key as `ssh-keygen -l` shows it (type and SHA256 fingerprint); "NOT PINNED"."""
    if not public_key:
        return "host key NOT PINNED"
    kind, blob = public_key.split()[:2]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
    return f"{kind} SHA256:{digest}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mockrun",
        description="Evaluate a stack's program under Pulumi mocks and print its resource tree.",
    )
    parser.add_argument("--stack", default="prod", help="stack name; config from Pulumi.<stack>.yaml (default prod)")
    parser.add_argument("--workers", type=int, help="override onionstack:workers")
    parser.add_argument("--availability-zones", type=int, help="override onionstack:availabilityZones")
    args = parser.parse_args(argv)

    from infra.config import ConfigError

    try:
        config = load_stack_file(args.stack)
    except FileNotFoundError as exc:
        print(f"mockrun: {exc}", file=sys.stderr)
        return 2
    if args.workers is not None:
        config[f"{PROJECT}:workers"] = args.workers
    if args.availability_zones is not None:
        config[f"{PROJECT}:availabilityZones"] = args.availability_zones
    config, injected = with_demo_secrets(config)
    try:
        result = run_program(config, stack=args.stack)
    except ConfigError as exc:
        print(f"mockrun: invalid config: {exc}", file=sys.stderr)
        return 2
    print(f"Previewing stack {PROJECT}/{args.stack} under Pulumi mocks (no cloud calls; "
          f"region {config.get('aws:region', DEFAULT_REGION)}, AMI and AZs answered by mocks)")
    for what in injected:
        print(f"note: Pulumi.{args.stack}.yaml cannot hold secrets; injected throwaway {what}")
    print()
    print(render_tree(result))
    print()
    print(render_summary(result))
    print(f"\nEvaluated in {result.seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
