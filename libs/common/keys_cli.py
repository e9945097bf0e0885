"""`mld-keys`: CURVE key pairs for the ZeroMQ transport between hosts.

A node makes its pair with `generate`, gives the public `NAME.key` to its peers, and a server
accepts a client once its public key is copied into the server's authorized_keys_dir (`authorize`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from libs.common import curve
from libs.common.cli import handle_errors, package_version
from libs.common.errors import UsageError

PROG = "mld-keys"


@click.group()
@click.version_option(package_version(), prog_name=PROG)
def main() -> None:
    """CURVE key pairs: generate, show, authorize."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--force", is_flag=True, help="overwrite an existing pair of that name")
@handle_errors(PROG)
def generate(directory: Path, name: str, force: bool) -> None:
    """Create DIRECTORY/NAME.key (public) and DIRECTORY/NAME.key_secret (mode 0600)."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"bad key name {name!r}", "NAME", "use a plain name such as node-a-sniffer")
    public, secret = curve.generate(directory, name, force)
    click.echo(f"{PROG}: wrote {public} (public, give to peers) and {secret} (secret, mode 0600)")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors(PROG)
def show(path: Path) -> None:
    """Print the Z85 public key of a .key or .key_secret file."""
    click.echo(curve.load_public(path, str(path)).decode())


@main.command()
@click.argument("public_key", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@handle_errors(PROG)
def authorize(public_key: Path, directory: Path) -> None:
    """Copy a client's PUBLIC_KEY (.key) into a server's authorized keys DIRECTORY."""
    if public_key.name.endswith(".key_secret"):
        raise UsageError(
            f"{public_key} is a secret key",
            "PUBLIC_KEY",
            "pass the NAME.key file; secrets never leave their host",
        )
    curve.load_public(public_key, str(public_key))  # refuse anything that is not a key file
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / public_key.name
    shutil.copyfile(public_key, dest)
    click.echo(f"{PROG}: {dest} authorized (servers re-read the directory on restart)")


if __name__ == "__main__":
    main()
