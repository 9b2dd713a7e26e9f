"""`vichat data ...` commands."""

import click


@click.group()
def data() -> None:
    """Instruction datasets: list, stats, prepare."""
