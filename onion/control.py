"""The balancer's connection to its local tor: stem Controller, cookie auth, events as messages.

Stem delivers events on its own thread. Nothing here touches balancer state: every event is
turned into a small immutable message and handed to `sink` (the balancer's queue), so the
balancer's single thread is the only one that reads or writes its state.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from onion.config import ControlEndpoint

log = logging.getLogger("onion.control")


# ----------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class DescContent:
    """HS_DESC_CONTENT: a descriptor body an HSDir returned for `address` (may be empty)."""
    address: str
    hsdir: str | None  # fingerprint, 40 hex, or None when tor said UNKNOWN
    descriptor_id: str | None
    text: str


@dataclass(frozen=True)
class DescEvent:
    """HS_DESC: REQUESTED / RECEIVED / UPLOAD / UPLOADED / FAILED / … for one HSDir."""
    action: str
    address: str
    hsdir: str | None
    descriptor_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class NewConsensus:
    """NEWCONSENSUS: tor has a new consensus; hash ring and time period may have changed."""


@dataclass(frozen=True)
class Disconnected:
    """The control connection closed (tor restarted or died)."""
    reason: str = ""


def _fingerprint(value: str | None) -> str | None:
    if not value:
        return None
    fp = value.lstrip("$").split("~")[0].split("=")[0].upper()
    return fp if len(fp) == 40 else None


def _address(value: str | None) -> str:
    return (value or "").lower().removesuffix(".onion")


# ----------------------------------------------------------------------------- tor control

class TorControl:
    """One stem Controller. Thread-safety: stem serialises `msg()`; events go to `sink`."""

    def __init__(self, endpoint: ControlEndpoint, sink: Callable[[object], None]):
        self.endpoint = endpoint
        self._sink = sink
        self._controller = None
        self._lock = threading.Lock()  # guards self._controller (replaced on reconnect)

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """Connect and authenticate (cookie, or none if tor needs none). Raises OSError-like
        `ControlError` with a one-line reason when tor is not there yet."""
        import stem
        import stem.connection
        from stem.control import Controller, EventType

        try:
            if self.endpoint.socket:
                controller = Controller.from_socket_file(path=self.endpoint.socket)
            else:
                controller = Controller.from_port(address="127.0.0.1", port=self.endpoint.port)
        except stem.SocketError as exc:
            raise ControlError(f"cannot connect to tor's control {self.endpoint.describe()}: {exc}") from None
        try:
            # stem picks cookie auth from PROTOCOLINFO; we never pass a password.
            controller.authenticate()
        except (stem.connection.AuthenticationFailure, stem.SocketError) as exc:
            controller.close()
            raise ControlError(f"cannot authenticate to tor's control {self.endpoint.describe()}: {exc}; "
                               "enable CookieAuthentication and let this user read the cookie") from None

        def on_close(closed, state, _timestamp):
            # Only the connection in use counts: after close()/reconnect a late CLOSED from
            # an old controller must not tear down the new connection.
            with self._lock:
                current = self._controller is closed
            if state == stem.control.State.CLOSED and current:
                self._sink(Disconnected("control connection closed"))

        controller.add_status_listener(on_close)
        controller.add_event_listener(self._on_hs_desc, EventType.HS_DESC)
        controller.add_event_listener(self._on_hs_desc_content, EventType.HS_DESC_CONTENT)
        controller.add_event_listener(self._on_new_consensus, EventType.NEWCONSENSUS)
        with self._lock:
            self._controller = controller
        log.info("connected to tor %s at %s", controller.get_version(), self.endpoint.describe())

    def close(self) -> None:
        with self._lock:
            controller, self._controller = self._controller, None
        if controller is not None:
            try:
                controller.close()
            except Exception:  # closing a dead socket must not matter
                pass

    def _ctl(self):
        with self._lock:
            controller = self._controller
        if controller is None:
            raise ControlError("not connected to tor")
        return controller

    # -- event translation (runs on stem's thread: only builds messages) -----
    def _on_hs_desc(self, event) -> None:
        self._sink(DescEvent(action=str(event.action), address=_address(event.address),
                             hsdir=_fingerprint(event.directory),
                             descriptor_id=event.descriptor_id if event.descriptor_id not in (None, "UNKNOWN") else None,
                             reason=str(event.reason) if event.reason else None))

    def _on_hs_desc_content(self, event) -> None:
        # The body is the event's text minus its first line and the closing "OK". stem also
        # tries to parse it as a v2 descriptor; we ignore that and verify it ourselves.
        lines = str(event).splitlines()
        body = "\n".join(lines[1:-1]) + "\n" if len(lines) > 2 else ""
        self._sink(DescContent(address=_address(event.address), hsdir=_fingerprint(event.directory),
                               descriptor_id=event.descriptor_id if event.descriptor_id != "UNKNOWN" else None,
                               text=body))

    def _on_new_consensus(self, _event) -> None:
        self._sink(NewConsensus())

    # -- commands -------------------------------------------------------------
    def fetch_descriptor(self, address: str, servers: Sequence[str] = ()) -> None:
        """HSFETCH; the result arrives as HS_DESC / HS_DESC_CONTENT events."""
        request = f"HSFETCH {address}" + "".join(f" SERVER={s}" for s in servers)
        self._command(request)

    def post_descriptor(self, text: str, address: str, server: str) -> None:
        """HSPOST to one HSDir; tor answers HS_DESC UPLOADED/FAILED for that HSDir later.
        SERVER= must precede HSADDRESS= (tor ignores HSADDRESS otherwise, tor#26523)."""
        # stem turns a message with newlines into "+HSPOST …" lines ending with ".".
        self._command(f"HSPOST SERVER={server} HSADDRESS={address}\n" + text.replace("\r\n", "\n").rstrip("\n"))

    def _command(self, request: str) -> None:
        import stem

        try:
            response = self._ctl().msg(request)
        except stem.SocketClosed as exc:
            raise ControlError(f"control connection closed: {exc}") from None
        except stem.ControllerError as exc:
            raise CommandRejected(f"{request.split()[0].lstrip('+')}: {exc}") from None
        if not response.is_ok():
            raise CommandRejected(f"{request.split()[0].lstrip('+')} refused by tor: {response}")

    def get_info(self, key: str) -> str:
        import stem

        try:
            return self._ctl().get_info(key)
        except stem.SocketClosed as exc:
            raise ControlError(f"control connection closed: {exc}") from None
        except stem.ControllerError as exc:
            raise CommandRejected(f"GETINFO {key}: {exc}") from None

    def get_conf(self, key: str) -> str | None:
        import stem

        try:
            return self._ctl().get_conf(key)
        except stem.SocketClosed as exc:
            raise ControlError(f"control connection closed: {exc}") from None
        except stem.ControllerError as exc:
            raise CommandRejected(f"GETCONF {key}: {exc}") from None

    def signal_active(self) -> None:
        """Keep tor out of dormant mode: a balancer only talks to tor over the control port."""
        import stem
        from stem import Signal

        try:
            self._ctl().signal(Signal.ACTIVE)
        except stem.ControllerError:
            pass


class ControlError(ConnectionError):
    """The control connection is missing or broke; the balancer reconnects with backoff."""


class CommandRejected(ValueError):
    """tor refused one command (e.g. an unknown SERVER); the connection is still fine."""
