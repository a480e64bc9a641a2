"""`python -m onion keygen | address | import`: onion identity keys on the command line.

keygen --out DIR   write a new tor hidden-service directory, print its address
address PATH       print the address of a hidden-service dir, key file (tor or PEM) or
                   tor public key file
import PATH        print a directory's (or key file's) secret as the stack config takes
                   it: `ED25519-V3:<base64>`; pipe it, never paste it on a command line:
                   python -m onion import DIR | pulumi config set --secret --path masterKeys.NAME
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onion.cli import command_parser
from onion.errors import KeyFileError
from onion.keys import (
    PUBLIC_KEY_HEADER, SECRET_KEY_FILE, IdentityKey, onion_address, read_public_key_file,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    keygen = command_parser(
        sub, "keygen", help="generate a v3 onion identity as a tor hidden-service directory",
        description="Generate a new v3 onion identity (a site's master key) and write it as a tor "
                    "hidden-service directory (dir 0700, files 0600). Prints the onion address; the "
                    "secret key never leaves the directory. Refuses to replace an existing key.",
        examples="""\
onion keygen --out keys/news                          # prints <56 chars>.onion
onion keygen --out keys/news --pem keys/news.pem      # also OnionBalance's PEM form
onion import keys/news | pulumi config set --secret --path masterKeys.news""")
    keygen.add_argument("--out", required=True, metavar="DIR",
                        help="directory to create (hs_ed25519_secret_key, hs_ed25519_public_key, hostname)")
    keygen.add_argument("--pem", metavar="FILE",
                        help="also write the key as unencrypted PKCS#8 PEM (mode 0600)")
    keygen.set_defaults(func=cmd_keygen)

    address = command_parser(
        sub, "address", help="print the onion address of a key",
        description="Print the onion address of a key: a tor hidden-service directory, its "
                    "hs_ed25519_secret_key or hs_ed25519_public_key, or a PEM key (OnionBalance's).",
        examples="""\
onion address keys/news
onion address /var/lib/tor/mysite/hs_ed25519_public_key""")
    address.add_argument("path", metavar="DIR|FILE",
                         help="hidden-service directory, hs_ed25519_secret_key, hs_ed25519_public_key or PEM")
    address.set_defaults(func=cmd_address)

    imp = command_parser(
        sub, "import", help="print a key in the stack config's form (ED25519-V3:...)",
        description="Print a key's secret in the form the stack config's masterKeys takes "
                    "(ED25519-V3:<base64>), to pipe into `pulumi config set --secret`; never paste it "
                    "on a command line. Reads a tor hidden-service directory or a key file.",
        examples="""\
onion import keys/news | pulumi config set --secret --path masterKeys.news
onion import /var/lib/tor/mysite | pulumi config set --secret --path masterKeys.mysite""")
    imp.add_argument("path", metavar="DIR|FILE", help="hidden-service directory or key file")
    imp.set_defaults(func=cmd_import)


def cmd_keygen(args) -> int:
    out = Path(args.out)
    if (out / SECRET_KEY_FILE).exists():
        raise KeyFileError(f"{out / SECRET_KEY_FILE} already exists: refusing to replace a key "
                           "(its onion address would be lost); choose another --out")
    if args.pem and Path(args.pem).exists():
        raise KeyFileError(f"{args.pem} already exists: refusing to overwrite it")
    key = IdentityKey.generate()
    key.write_hs_dir(out)
    if args.pem:
        key.write_pem(args.pem)
    print(key.hostname)
    print(f"secret key in {out / SECRET_KEY_FILE}; for the stack config: "
          f"python -m onion import {out} | pulumi config set --secret --path masterKeys.NAME",
          file=sys.stderr)
    return 0


def _address_of(path: Path) -> str:
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(32)
        if head == PUBLIC_KEY_HEADER:
            return onion_address(read_public_key_file(path))
    return IdentityKey.from_file(path).address


def cmd_address(args) -> int:
    print(_address_of(Path(args.path)) + ".onion")
    return 0


def cmd_import(args) -> int:
    key = IdentityKey.from_file(Path(args.path))
    if sys.stdout.isatty():
        print(f"onion import: printing the secret key of {key.hostname} to the terminal; "
              "pipe it into `pulumi config set --secret` instead", file=sys.stderr)
    print(key.to_config_string())
    return 0
