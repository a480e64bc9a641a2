"""`onion run | status | maps | schema`: the balancer daemon, its read-only views and its config schema."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from onion.cli import command_parser
from onion.config import DEFAULT_STATE_DIR, load_config, load_keys


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = command_parser(
        sub, "run", help="run the balancer core (publishes the frontends' descriptors)",
        description="Run the balancer core: fetch and verify the instances' descriptors through the "
                    "local tor, probe the instances, and publish each frontend's descriptors to its "
                    "HSDirs. Logs go to stderr; SIGHUP re-reads the config, SIGTERM stops it. "
                    "OnionBalance's config.yaml and its -c/-p/-s/-v options work as they are.",
        examples="""\
onion run -c /etc/onionstack/balancer.yaml               # onionstack's config (see docs/balancer.md)
onion run -c config.yaml -p 9051                          # as `onionbalance -c config.yaml -p 9051`
onion run -c balancer.yaml --control-socket /run/tor/control --log-level debug""")
    run.add_argument("-c", "--config", required=True, metavar="FILE",
                     help="balancer YAML (onionstack's, or OnionBalance's config.yaml)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("-p", "--control-port", type=int, metavar="PORT",
                       help="tor control port on 127.0.0.1 (overrides the config's control)")
    group.add_argument("-s", "--control-socket", metavar="PATH",
                       help="tor control unix socket (overrides the config's control)")
    run.add_argument("--state-dir", metavar="DIR", help="override the config's state_dir")
    run.add_argument("-v", "--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"],
                     help="log level (default info; OnionBalance's -v takes the same words)")
    run.set_defaults(func=cmd_run)

    status = command_parser(
        sub, "status", help="show what the running balancer publishes",
        description="Show what the running balancer core publishes, from its status file "
                    "(<state_dir>/status.json): per frontend each instance (up/down, descriptor, intro "
                    "points), the published intro points, the uploads per HSDir and the next publish.",
        examples="""\
onion status -c /etc/onionstack/balancer.yaml              # state_dir from the config
onion status --state-dir /var/lib/onion-balancer --json    # the raw status JSON""")
    _state_args(status)
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.set_defaults(func=cmd_status)

    maps = command_parser(
        sub, "maps", help="print frontend -> instances (like EOTK's ob-maps)",
        description="Print one line per instance: <frontend name> <frontend>.onion <instance>.onion. "
                    "It loads the config and every key file as `run` does, so it also checks them.",
        examples="""\
onion maps -c /etc/onionstack/balancer.yaml""")
    maps.add_argument("-c", "--config", required=True, metavar="FILE", help="balancer YAML")
    maps.set_defaults(func=cmd_maps)

    schema = command_parser(
        sub, "schema", help="print the JSON Schema of the balancer config (for editors)",
        description="Print the JSON Schema (draft 2020-12) of the balancer config, for editors that "
                    "validate YAML (the yaml-language-server line, see docs/balancer.md). It checks the "
                    "structure; the core's loader also checks addresses, duplicates and key files.",
        examples="""\
onion schema > balancer.schema.json      # then, first line of balancer.yaml:
                                         # yaml-language-server: $schema=./balancer.schema.json
onion schema --path                      # where the installed schema file is""")
    schema.add_argument("--path", action="store_true", help="print the schema file's path instead")
    schema.set_defaults(func=cmd_schema)


def _state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="read state_dir from this balancer config")
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


SCHEMA_FILE = "balancer.schema.json"


def schema_path():
    """The balancer config's JSON Schema, shipped inside the package (onion/schema/)."""
    from importlib.resources import files

    return files("onion") / "schema" / SCHEMA_FILE


def cmd_schema(args) -> int:
    path = schema_path()
    if args.path:
        print(path)
    else:
        sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0
