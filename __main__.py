"""onionstack: the stack config -> one OnionSite (nodes/site.py) -> the stack outputs."""
import pulumi

from infra.config import load_config
from nodes.site import OnionSite, OnionSiteArgs

config = load_config()  # raises ConfigError before any resource exists
site = OnionSite("onionstack", OnionSiteArgs(config))  # so does a value the node templates cannot render
for name, value in site.exports.items():
    pulumi.export(name, value)
