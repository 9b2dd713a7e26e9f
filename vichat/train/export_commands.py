"""`vichat export ADAPTER_DIR --out DIR [--merge | --no-merge]`."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the merged model (or the adapter copy) to.")
@click.option("--merge/--no-merge", default=True, show_default=True,
              help="Merge the adapter into the base weights (a plain transformers model), or copy the adapter only.")
@click.option("--base-path", "--base", "base_path", default=None, type=click.Path(file_okay=False),
              help="The base model's weights in a local folder [default: the base the adapter was trained "
                   "on: its recorded folder, or its hub id].")
@click.option("--load-in", type=click.Choice(["none", "8bit", "4bit"]), default="none", show_default=True,
              help="How to load the base; a merge needs unquantised weights, so 8bit/4bit are refused.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="Dtype of the merged weights (auto = as the base is stored).")
def export_cmd(adapter_dir: str, out_dir: str, merge: bool, base_path: str | None, load_in: str, dtype: str) -> None:
    """Write a LoRA adapter out for serving: merged into its base model (default), or copied.

    \b
      vichat export runs/bloomz-chat --merge --out models/bloomz-chat-merged
    """
    from ..plugins import get_registry
    from .export import export

    out = export(adapter_dir, out_dir, merge=merge, base_models=get_registry().all("base_models"),
                 base_path=base_path, load_in=load_in, dtype=dtype)
    what = "merged model" if merge else "adapter"
    click.echo(f"wrote the {what} to {out}")


export = export_cmd  # the name the CLI attaches: `from vichat.train.export_commands import export`
