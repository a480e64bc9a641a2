"""A test double of ONE Pulumi provider: pulumi-command 1.2's `remote.Command` and
`remote.CopyToRemote`, run over real SSH. The rehearsal only; nothing in the product uses it.

It stands where the engine and the provider stand in a `pulumi up`: the program is evaluated
under Pulumi's mocks (`pulumi.runtime.set_mocks`) and every registration of a remote step
reaches `Provider.register` with what the engine would get (camelCased inputs, secrets
revealed from their marker dicts, the URNs it depends on). The SDK registers a resource only
when its inputs are known and its dependencies are registered, so a step's stdout reaches
the steps that read it exactly as in a deployment.

Semantics emulated (pulumi-command v1.2.1, provider/pkg/provider/remote/*.go, and the
engine's diff and delete order):

- no previous state: **create** runs `create` (nothing if unset); a failed create is kept
  as "failed" and runs again (as an update) next time;
- `triggers` changed, or an input named in `replaceOnChanges`: **replace**: create the new
  one now, the old one's `delete` runs at the end (`deleteBeforeReplace`: first);
- any other input changed: **update** runs `update`, or `create` when unset; a
  CopyToRemote copies again only if its source or remotePath changed;
- nothing changed: **same**: no SSH at all, the previous stdout/stderr are the outputs;
- in the state but not registered this run: **delete** runs its `delete` (nothing if
  unset) after every create and update, dependents before their dependencies;
- a command: SSH session per run, stdin only when non-empty, `environment` via SetEnv,
  PULUMI_COMMAND_STDOUT/STDERR unless `addPreviousOutputInEnv` is false; stdout and stderr
  lose one trailing newline; a non-zero exit fails the step;
- dialling: `hostKey` set -> only that key (and its algorithm) is accepted, else any key;
  every failed dial (refused, timed out, wrong host key, auth) is retried up to
  `dialErrorLimit` (-1: no limit) with pulumi's retry pacing (0.1 s x 1.5, at most 5 s);
  `perDialTimeout` bounds each dial. Simplification: a proxied dial (proxy, then target
  through it) is one attempt, counted against the target's limit;
- `logging` decides what of stdout/stderr the log shows; a failed secret-logging step's
  output goes only to a 0600 file.

State (`executor.json`, 0600): per URN the digests of the inputs, stdout/stderr, the
dependencies, and for steps with a `delete` what that delete needs (command, connection,
stdin), as Pulumi's state keeps them.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

COMMAND = "command:remote:Command"
COPY = "command:remote:CopyToRemote"
TYPES = (COMMAND, COPY)
SECRET_SIG = "4dabf18193072939515e22adb298388d"
DIAL_DELAY, DIAL_BACKOFF, DIAL_MAX_DELAY = 0.1, 1.5, 5.0   # pulumi's retry.Until pacing
Log = Callable[[str], None]


class StepError(RuntimeError):
    """A remote step failed (the message never holds a secret step's output)."""


class DialError(RuntimeError):
    """One dial attempt failed (connect, handshake, host key, auth)."""


def reveal(value: Any) -> Any:
    """Inputs as the provider sees them: secret markers replaced by their values."""
    if isinstance(value, dict) and SECRET_SIG in value and "value" in value:
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """JSON-able form for digests (assets by content, numbers as the engine sends them)."""
    if hasattr(value, "text") and type(value).__name__ == "StringAsset":
        return {"asset:text": value.text}
    if hasattr(value, "path") and type(value).__name__ == "FileAsset":
        return {"asset:path": value.path, "sha256": hashlib.sha256(Path(value.path).read_bytes()).hexdigest()}
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(value), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Connection:
    host: str
    user: str = "root"
    port: int = 22
    private_key: Optional[str] = None
    host_key: Optional[str] = None
    dial_error_limit: int = 10
    per_dial_timeout: int = 15
    proxy: Optional["Connection"] = None

    @classmethod
    def from_inputs(cls, raw: dict) -> "Connection":
        """pulumi-command's schema defaults: user root, port 22, 10 dials, 15 s per dial."""
        raw = reveal(raw)
        if not raw.get("host"):
            raise StepError("connection: no host")
        for unsupported in ("password", "privateKeyPassword", "agentSocketPath"):
            if raw.get(unsupported):
                raise StepError(f"connection.{unsupported}: the rehearsal's provider supports private keys only")
        return cls(host=raw["host"], user=raw.get("user") or "root", port=int(raw.get("port") or 22),
                   private_key=raw.get("privateKey"), host_key=raw.get("hostKey") or None,
                   dial_error_limit=int(raw.get("dialErrorLimit", 10)),
                   per_dial_timeout=int(raw.get("perDialTimeout", 15)),
                   proxy=cls.from_inputs(raw["proxy"]) if raw.get("proxy") else None)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "proxy"}
        out["proxy"] = self.proxy.to_json() if self.proxy else None
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Connection":
        return cls(**{**data, "proxy": cls.from_json(data["proxy"]) if data.get("proxy") else None})


@dataclass
class Resource:
    """One registration of a pulumi-command resource, as the monitor received it."""

    urn: str
    type: str
    name: str
    inputs: dict                        # camelCase, secrets revealed
    dependencies: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False
    timeouts: dict = field(default_factory=dict)  # create/update/delete -> seconds (0: none)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.inputs.get(key)
        return default if value is None else value


class Session(Protocol):
    def run(self, command: str, stdin: Optional[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]: ...
    def copy(self, content: bytes, remote_path: str, timeout: float) -> None: ...
    def close(self) -> None: ...


class Transport(Protocol):
    def dial(self, conn: Connection) -> Session:
        """One attempt; raises DialError."""


@dataclass
class Op:
    kind: str          # create | update | replace | delete | same | failed
    name: str
    type: str
    started: float
    seconds: float = 0.0
    ran: bool = False  # a command or copy actually ran over SSH


# ---------------------------------------------------------------------- the provider
class Provider:
    def __init__(self, state_path: Path, transport: Transport, *, log: Log = print,
                 max_step_seconds: float = 1800.0, secret_log: Optional[Path] = None) -> None:
        self.state_path = Path(state_path)
        self.transport = transport
        self.log = log
        self.max_step_seconds = max_step_seconds
        self.secret_log = secret_log or self.state_path.with_name("secret-steps.log")
        self.state: dict[str, dict] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.seen: set[str] = set()
        self.pending_deletes: list[dict] = []
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0

    # -------------------------------------------------------------- registration
    def register(self, res: Resource) -> dict:
        """Create/update/replace/no-op `res`; returns its outputs (inputs + stdout/stderr)."""
        if res.type not in TYPES:
            raise ValueError(f"{res.type}: not a pulumi-command remote resource")
        digests = {k: digest(v) for k, v in res.inputs.items()}
        with self._lock:
            old = self.state.get(res.urn)
            self.seen.add(res.urn)
        if old is None:
            kind = "create"
        elif any(digests.get(k) != old["digests"].get(k) for k in ("triggers", *res.replace_on_changes)):
            kind = "replace"
        elif old.get("failed") or digests != old["digests"]:
            kind = "update"
        else:
            self._op(Op("same", res.name, res.type, time.time()))
            return {**res.inputs, **old["outputs"]}
        op = Op(kind, res.name, res.type, time.time())
        with self._lock:
            self._running += 1
        try:
            return self._change(res, kind, old, op, digests)
        finally:
            with self._lock:
                self._running -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait for the operations in flight (the engine lets them finish after a failure)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def _change(self, res: Resource, kind: str, old: Optional[dict], op: Op, digests: dict) -> dict:
        if kind == "replace" and res.delete_before_replace:
            self._delete(old, res.urn)
        try:
            outputs, op.ran = self._apply(res, kind, old)
        except BaseException:
            op.kind, op.seconds = "failed", time.time() - op.started
            self._op(op)
            with self._lock:
                if kind == "create":
                    self.state[res.urn] = self._entry(res, digests, {"stdout": "", "stderr": ""}, failed=True)
                self._save()
            raise
        op.seconds = time.time() - op.started
        with self._lock:
            if kind == "replace" and not res.delete_before_replace:
                self.pending_deletes.append({**old, "urn": res.urn})
            self.state[res.urn] = self._entry(res, digests, outputs)
            self._save()
        self._op(op)
        return {**res.inputs, **outputs}

    def _apply(self, res: Resource, kind: str, old: Optional[dict]) -> tuple[dict, bool]:
        conn = Connection.from_inputs(res.get("connection", {}))
        timeout = self._timeout(res.timeouts.get("update" if kind == "update" else "create"))
        if res.type == COPY:
            source, path = res.inputs.get("source"), res.get("remotePath")
            if kind == "update" and digest(source) == old["digests"].get("source") \
                    and digest(path) == old["digests"].get("remotePath"):
                return {}, False  # copyController.Update: nothing to copy
            self._copy(res.name, conn, source, path, timeout)
            return {}, True
        command = res.get("update") if kind == "update" and res.get("update") else res.get("create")
        if not command:
            return {"stdout": "", "stderr": ""}, False
        env = dict(res.get("environment", {}))
        if res.get("addPreviousOutputInEnv", True) and old:
            for key, value in (("PULUMI_COMMAND_STDOUT", old["outputs"].get("stdout")),
                               ("PULUMI_COMMAND_STDERR", old["outputs"].get("stderr"))):
                if value:
                    env[key] = value
        out, err = self._run(res.name, conn, command, res.get("stdin"), env, res.get("logging"), timeout)
        return {"stdout": out, "stderr": err}, True

    def _entry(self, res: Resource, digests: dict, outputs: dict, failed: bool = False) -> dict:
        entry = {"type": res.type, "name": res.name, "digests": digests, "outputs": outputs,
                 "dependencies": list(res.dependencies), "failed": failed,
                 "logging": res.get("logging"), "delete_timeout": res.timeouts.get("delete", 0)}
        if res.get("delete"):
            # What a later delete needs, as Pulumi's state keeps it (secrets encrypted there,
            # here in a 0600 file of the rehearsal's own throwaway key).
            entry["delete"] = {"command": res.get("delete"), "stdin": res.get("stdin"),
                               "environment": res.get("environment", {}),
                               "connection": Connection.from_inputs(res.get("connection")).to_json()}
        return entry

    # -------------------------------------------------------------- deletes
    def finish(self) -> list[str]:
        """After the program: delete what left it, and what was replaced; dependents first."""
        gone = [{**self.state[u], "urn": u} for u in self.state if u not in self.seen]
        todo = self.pending_deletes + gone
        self.pending_deletes = []
        done = []
        while todo:
            urns = {e["urn"] for e in todo}
            # A resource goes only when nothing left to delete depends on it.
            ready = [e for e in todo if not any(e["urn"] in o["dependencies"] for o in todo if o is not e)]
            if not ready:
                raise StepError(f"dependency cycle among deletes: {sorted(urns)}")
            for entry in ready:
                self._delete(entry, entry["urn"])
                if entry in gone:
                    self.state.pop(entry["urn"], None)
                    self._save()
                done.append(entry["name"])
                todo.remove(entry)
        return done

    def _delete(self, entry: dict, urn: str) -> None:
        op = Op("delete", entry["name"], entry["type"], time.time())
        spec = entry.get("delete")
        if spec:
            conn = Connection.from_json(spec["connection"])
            self._run(entry["name"] + " (delete)", conn, spec["command"], spec.get("stdin"),
                      dict(spec.get("environment") or {}), entry.get("logging"),
                      self._timeout(entry.get("delete_timeout")))
            op.ran = True
        op.seconds = time.time() - op.started
        self._op(op)

    # -------------------------------------------------------------- SSH
    def _timeout(self, custom: Optional[float]) -> float:
        return min(float(custom), self.max_step_seconds) if custom else self.max_step_seconds

    def dial(self, name: str, conn: Connection, deadline: float) -> Session:
        limit = conn.dial_error_limit
        delay, attempt = DIAL_DELAY, 0
        while True:
            attempt += 1
            try:
                return self.transport.dial(conn)
            except DialError as exc:
                if (limit >= 0 and attempt > limit) or time.monotonic() + delay > deadline:
                    raise StepError(f"{name}: dialing {conn.user}@{conn.host}"
                                    f"{' via ' + conn.proxy.host if conn.proxy else ''}: after {attempt} "
                                    f"failed attempts: {exc}") from None
                self.log(f"{name}: dial {attempt}/{'inf' if limit < 0 else limit} failed: retrying ({exc})")
                time.sleep(delay)
                delay = min(delay * DIAL_BACKOFF, DIAL_MAX_DELAY)

    def _run(self, name: str, conn: Connection, command: str, stdin: Optional[str], env: dict,
             logging: Optional[str], timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        session = self.dial(name, conn, deadline)
        try:
            rc, out, err = session.run(command, stdin or None, env, max(1.0, deadline - time.monotonic()))
        finally:
            session.close()
        logging = logging or "stdoutAndStderr"
        shown = (out if logging in ("stdout", "stdoutAndStderr") else "") + \
                (err if logging in ("stderr", "stdoutAndStderr") else "")
        for line in shown.splitlines():
            self.log(f"{name}: {line}")
        if rc != 0:
            if logging == "none":
                self._secret_log(name, out + err)
                raise StepError(f"{name}: exit {rc} (logging is off for this step: output in {self.secret_log})")
            raise StepError(f"{name}: exit {rc}:\n{(out + err)[-4000:]}")
        return out.removesuffix("\n"), err.removesuffix("\n")

    def _copy(self, name: str, conn: Connection, source: Any, path: str, timeout: float) -> None:
        if type(source).__name__ == "StringAsset":
            content = source.text.encode()
        elif type(source).__name__ == "FileAsset":
            content = Path(source.path).read_bytes()
        else:
            raise StepError(f"{name}: source {type(source).__name__}: the rehearsal copies text and file assets only")
        deadline = time.monotonic() + timeout
        session = self.dial(name, conn, deadline)
        try:
            session.copy(content, path, max(1.0, deadline - time.monotonic()))
        finally:
            session.close()
        self.log(f"{name}: copied {len(content)} bytes to {path}")

    def _secret_log(self, name: str, text: str) -> None:
        fd = os.open(self.secret_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"--- {time.strftime('%H:%M:%S')} {name}\n{text}\n")

    # -------------------------------------------------------------- bookkeeping
    def _op(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)
        if op.kind != "same":
            self.log(f"[{op.kind}] {op.name} ({op.seconds:.1f} s)")

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f, indent=1)
        tmp.replace(self.state_path)

    def changed(self) -> list[Op]:
        """Every operation of this run that was not a no-op."""
        return [o for o in self.ops if o.kind != "same"]
