"""onionstack as a library for your own Pulumi program: one component, `OnionSite`, that
declares a whole load-balanced onion site (balancer, workers, database, backups, alarms).

    from onionstack import ExistingNetwork, OnionSite, OnionSiteArgs

    site = OnionSite("news-onion", OnionSiteArgs.of(
        sites=[{"name": "news", "domain": "example.com"}],
        master_keys={"news": config.require("newsMasterKey")},
        admin_cidrs=["198.51.100.7/32"],
        network=ExistingNetwork(vpc.id, public_subnet_ids, private_subnet_ids),
    ))

`OnionSiteArgs.from_stack_config()` reads the `onionstack:*` keys of the stack instead;
without `network` the site makes its own VPC. `site.exports` holds what the stack outputs
would (docs/stack.md). Installed by `pip install <checkout>/stack` (distribution
`onionstack`); the implementation lives in the `infra`, `nodes` and `onion` packages it
installs beside this one.
"""
from infra.config import ConfigError, StackConfig, load_config, parse_config
from infra.network import ExistingNetwork
from nodes.site import OnionSite, OnionSiteArgs

__all__ = ["ConfigError", "ExistingNetwork", "OnionSite", "OnionSiteArgs", "StackConfig", "load_config",
           "parse_config"]
