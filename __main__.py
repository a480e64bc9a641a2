"""onionstack: the stack config -> one OnionSite (nodes/site.py) -> the stack outputs."""
import pulumi

from infra.config import NAMESPACE, ConfigError, load_config
from nodes.site import OnionSite, OnionSiteArgs

if pulumi.get_project() != NAMESPACE:
    # Pulumi.yaml declares the settings for the project's own namespace, and the program reads
    # onionstack:* (what `pulumi new` prompted for, the docs' commands): renamed, they part.
    raise ConfigError(f"the project is named {pulumi.get_project()!r}, but this program reads its settings as "
                      f"{NAMESPACE}:*; set `name: {NAMESPACE}` in Pulumi.yaml (with pulumi new: --name {NAMESPACE})")
config = load_config()  # raises ConfigError before any resource exists
site = OnionSite("onionstack", OnionSiteArgs(config))  # so does a value the node templates cannot render
for name, value in site.exports.items():
    pulumi.export(name, value)
