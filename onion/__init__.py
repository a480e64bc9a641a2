"""onionstack's balancer core and operator CLI (`onion`), installable alone: it imports no
pulumi, infra or nodes. The version below is the single source (pyproject.toml reads it)."""

__version__ = "0.1.0"
