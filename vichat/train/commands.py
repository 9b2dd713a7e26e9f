"""`vichat train` command."""

import click


@click.command()
def train() -> None:
    """Fine-tune a base model with LoRA."""
