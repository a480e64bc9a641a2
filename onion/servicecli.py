"""`python -m onion run | status | maps`: the balancer daemon and its read-only views."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from onion.config import DEFAULT_STATE_DIR, load_config, load_keys


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the balancer core (publishes the frontends' descriptors)")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="balancer YAML (onionstack's, or OnionBalance's config.yaml)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--control-port", type=int, metavar="PORT", help="tor control port on 127.0.0.1")
    group.add_argument("--control-socket", metavar="PATH", help="tor control unix socket")
    run.add_argument("--state-dir", metavar="DIR", help="override the config's state_dir")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show what the running balancer publishes")
    _state_args(status)
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.set_defaults(func=cmd_status)

    maps = sub.add_parser("maps", help="print frontend -> instances (like EOTK's ob-maps)")
    maps.add_argument("--config", required=True, metavar="FILE")
    maps.set_defaults(func=cmd_maps)


def _state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="read state_dir from this balancer config")
    parser.add_argument("--state-dir", metavar="DIR", help=f"status file directory (default {DEFAULT_STATE_DIR})")


def _state_dir(args) -> str:
    if args.state_dir:
        return args.state_dir
    if args.config:
        return load_config(args.config, load_keys=False).state_dir
    return DEFAULT_STATE_DIR


def cmd_run(args) -> int:
    from onion.balancer import Balancer
    from onion.control import TorControl
    from onion.frontend import TorOnionProtocol
    from onion.probe import Prober

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # stem narrates every GETINFO at debug/trace level
        import stem.util.log  # noqa: F401 - it sets the "stem" logger's level on import

        logging.getLogger("stem").setLevel(logging.WARNING)
    overrides = {"control_port": args.control_port, "control_socket": args.control_socket,
                 "state_dir": args.state_dir}
    cfg = load_config(args.config, **overrides)
    keys = load_keys(cfg)
    sink: list = []
    control = TorControl(cfg.control, lambda m: sink[0](m))
    prober = Prober(cfg.socks_port, cfg.probe.port, cfg.probe.timeout, lambda m: sink[0](m),
                    instances=sum(len(fe.instances) for fe in cfg.frontends))
    balancer = Balancer(cfg, keys, control, TorOnionProtocol(), prober, load_overrides=overrides)
    sink.append(balancer.submit)
    for fe in balancer.frontends:
        logging.getLogger("onion.balancer").info("frontend %s: %s.onion <- %d instances", fe.name,
                                                 fe.address, len(fe.instances))
    return balancer.run_forever()


def cmd_status(args) -> int:
    from onion.status import format_status, read_status

    data = read_status(_state_dir(args))
    if args.json:
        json.dump(data, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        print(format_status(data))
    return 0


def cmd_maps(args) -> int:
    cfg = load_config(args.config)
    keys = load_keys(cfg)
    for fe in cfg.frontends:
        for inst in fe.instances:
            print(f"{fe.name} {keys[fe.name].address}.onion {inst.address}.onion")
    return 0
