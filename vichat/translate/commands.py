"""`vichat translate` command."""

import click


@click.command()
def translate() -> None:
    """Translate a dataset file."""
