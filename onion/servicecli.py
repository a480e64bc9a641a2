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
onion status --state-dir /var/lib/onion-balancer --json    # the raw status JSON
onion status -c /etc/onionstack/balancer.yaml --check      # one line + exit 0/1/2/3 (Nagios)
onion status -c /etc/onionstack/balancer.yaml --watch      # refresh in place every 2 s""")
    _state_args(status)
    status.add_argument("--json", action="store_true",
                        help="print the raw status JSON (what the daemon wrote), e.g. for jq")
    status.add_argument("--check", action="store_true",
                        help="monitoring-plugin mode: a one-line summary first (instances up, HSDirs "
                             "serving, reachability), then each problem; exit 0 OK, 1 WARNING, 2 CRITICAL, "
                             "3 UNKNOWN. A status file older than 3 probe intervals is CRITICAL "
                             "(balancer not running?). Example: onion status -c balancer.yaml --check")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                        help="redraw in place every SECONDS (default 2) until Ctrl-C; with --check the "
                             "summary and problems head the screen. Example: onion status -c balancer.yaml --watch 5")
    status.set_defaults(func=cmd_status)

    ship = command_parser(
        sub, "ship-metrics", help="ship the balancer's metrics to CloudWatch (AWS)",
        description="Read the balancer core's /metrics every interval and put the metrics the stack's "
                    "alarms watch into CloudWatch (namespace Onionstack/<stack>), with the instance role's "
                    "credentials (IMDSv2). When the core does not answer nothing is shipped, and the alarms "
                    "(missing data = breaching) go off. Runs as its own systemd unit on the balancer.",
        examples="""\
onion ship-metrics --metrics-url http://127.0.0.1:9961/metrics --namespace Onionstack/prod --region eu-central-1
onion ship-metrics --metrics-url http://127.0.0.1:9961/metrics --namespace Onionstack/prod --region eu-central-1 --once""")
    ship.add_argument("--metrics-url", required=True, metavar="URL",
                      help="the core's metrics (its config's metrics.listen + /metrics), "
                           "e.g. http://127.0.0.1:9961/metrics")
    ship.add_argument("--namespace", required=True, metavar="NS",
                      help="CloudWatch namespace the instance role may write, e.g. Onionstack/prod")
    ship.add_argument("--region", required=True, metavar="REGION", help="AWS region, e.g. eu-central-1")
    ship.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                      help="seconds between shipments (default 60, what the alarms' periods expect), "
                           "e.g. --interval 60")
    ship.add_argument("--once", action="store_true",
                      help="ship once and exit (0 when shipped), e.g. to test the role: ... --once")
    ship.set_defaults(func=cmd_ship_metrics)

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
    metrics = None
    if cfg.metrics is not None:
        from onion.metrics import MetricsServer

        metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port)
    from onion.e2e import FrontendProber

    balancer = Balancer(cfg, keys, control, TorOnionProtocol(), prober, load_overrides=overrides,
                        metrics=metrics, frontend_prober=FrontendProber(lambda m: sink[0](m)))
    sink.append(balancer.submit)
    for fe in balancer.frontends:
        logging.getLogger("onion.balancer").info("frontend %s: %s.onion <- %d instances", fe.name,
                                                 fe.address, len(fe.instances))
    return balancer.run_forever()


def cmd_status(args) -> int:
    import time

    from onion.status import UNKNOWN, check, format_status, read_status

    state_dir = _state_dir(args)

    def render() -> tuple[int, str]:
        try:
            data = read_status(state_dir)
        except (OSError, ValueError) as exc:
            if args.check:
                code, lines = check(None, error=str(exc))
                return code, "\n".join(lines)
            raise
        if args.json:
            return 0, json.dumps(data, indent=1, sort_keys=True)
        if args.check:
            code, lines = check(data)
            return code, "\n".join(lines)
        return 0, format_status(data)

    if args.watch is None:
        code, text = render()
        print(text)
        return code
    if not args.watch > 0:
        raise ValueError(f"--watch {args.watch}: give a positive number of seconds")
    tty = sys.stdout.isatty()
    code = UNKNOWN
    try:
        while True:
            try:
                code, text = render()
            except (OSError, ValueError) as exc:
                code, text = UNKNOWN, f"onion status: {exc}"
            stamp = time.strftime("%H:%M:%S")
            # home + clear below: redraw in place without scrolling; a pipe gets separators
            sys.stdout.write(("\x1b[H\x1b[J" if tty else "\n") + f"{stamp}  (every {args.watch:g} s, Ctrl-C to stop)\n"
                             + text + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return code


def cmd_ship_metrics(args) -> int:
    from onion.cloudwatch import Shipper

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.interval > 0:
        raise ValueError(f"--interval {args.interval}: give a positive number of seconds")
    shipper = Shipper(args.metrics_url, args.namespace, args.region)
    if args.once:
        print(f"shipped {shipper.ship_once()} metrics to {args.namespace}")
        return 0
    shipper.run_forever(args.interval)
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
