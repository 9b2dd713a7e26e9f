"""`vichat tiny ...` commands."""

import click


@click.group()
def tiny() -> None:
    """The tiny offline default model: build and inspect."""
