"""`python -m lab rehearse`: a deploy rehearsed on local systemd hosts (docs/rehearsal.md).

hosts.py     the fabric: systemd-nspawn containers over overlays of this machine's root,
             network namespaces on a private bridge, NoCloud seeds, teardown from a ledger
program.py   the real program under Pulumi's mocks, remote steps routed to the executor
executor.py  a test double of pulumi-command's remote provider (create/update/replace/delete)
ssh.py       its transport: OpenSSH with host-key pinning and the jump host
run.py       the rehearsal: network, origin, hosts, deploys, access for the checks
checks.py    the whole sequence, one line per check
"""
