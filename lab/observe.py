"""An independent view of what a balancer published: fetch an onion service's descriptor
from the HSDirs through a lab tor (HSFETCH + HS_DESC_CONTENT) and decrypt it with stem.

The benchmark judges OnionBalance and onionstack's balancer the same way with this, rather
than trusting either one's own status report.
"""
from __future__ import annotations

import queue

from lab.tornet import TorNode, controller


def fetch_intro_keys(node: TorNode, address: str, timeout: float = 30.0) -> set[str] | None:
    """Auth keys (base64) of the intro points in the service's descriptor as an HSDir
    serves it now; None if the HSDir tor asked had none (or said no), or none answered
    within `timeout`.

    HSFETCH without SERVER= asks one HSDir and tor does not try another when it fails
    (hs_client_refetch_hsdesc picks one; the failure only ends the fetch), so a FAILED
    event ends the wait at once: the caller asks again, and tor picks another HSDir."""
    import stem
    from stem.control import EventType
    from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

    address = address.removesuffix(".onion")
    results: queue.Queue = queue.Queue()

    def on_event(event) -> None:
        if getattr(event, "address", None) != address:
            return
        if event.type == "HS_DESC_CONTENT":
            results.put(event.descriptor)
        elif event.type == "HS_DESC" and str(event.action) == "FAILED":
            results.put(None)

    with controller(node) as ctl:
        ctl.add_event_listener(on_event, EventType.HS_DESC_CONTENT, EventType.HS_DESC)
        ctl.msg(f"HSFETCH {address}")
        try:
            while True:
                desc = results.get(timeout=timeout)
                if desc is None:
                    return None  # that HSDir failed the fetch; no other one is asked
                raw = str(desc) if not isinstance(desc, str) else desc
                try:
                    inner = HiddenServiceDescriptorV3.from_str(raw).decrypt(address)
                except (ValueError, stem.DescriptorUnavailable):
                    continue
                return {_auth_key(ip) for ip in inner.introduction_points}
        except queue.Empty:
            return None
        finally:
            ctl.remove_event_listener(on_event)


def _auth_key(intro_point) -> str:
    import base64

    return base64.b64encode(intro_point.auth_key_cert.key).decode()


def fetch_inner_layer(node: TorNode, address: str, timeout: float = 30.0, tries: int = 5) -> str | None:
    """The decrypted inner layer (text) of the service's descriptor as an HSDir serves it
    now, through `node`'s tor; None if no HSDir answered in `tries` fetches. Its lines show
    what the service advertises to clients (e.g. `pow-params`)."""
    import stem
    from stem.control import EventType
    from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

    address = address.removesuffix(".onion")
    for _ in range(tries):
        results: queue.Queue = queue.Queue()

        def on_event(event) -> None:
            if getattr(event, "address", None) != address:
                return
            if event.type == "HS_DESC_CONTENT":
                results.put(event.descriptor)
            elif event.type == "HS_DESC" and str(event.action) == "FAILED":
                results.put(None)

        with controller(node) as ctl:
            ctl.add_event_listener(on_event, EventType.HS_DESC_CONTENT, EventType.HS_DESC)
            try:
                ctl.msg(f"HSFETCH {address}")
                desc = results.get(timeout=timeout)
            except queue.Empty:
                desc = None
            finally:
                ctl.remove_event_listener(on_event)
        if desc is None:
            continue  # that HSDir failed (or none answered): tor picks another next time
        raw = str(desc) if not isinstance(desc, str) else desc
        try:
            return str(HiddenServiceDescriptorV3.from_str(raw).decrypt(address))
        except (ValueError, stem.DescriptorUnavailable):
            continue
    return None
