"""The `tandem` command: one entry point for the operator, the workload runtimes and the tools.

Subcommands load lazily, so `tandem serve` never imports torch and `tandem operator` never imports
onnxruntime: each image installs only the extra it runs.
"""

from __future__ import annotations

import importlib

import click

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("tandem.operator_main", "operator_command"),
    "crds": ("tandem.api.crdgen", "crds_command"),
    "train": ("tandem.trainer.cli", "train"),
    "serve": ("tandem.server.cli", "serve"),
    "profile": ("tandem.profiling.cli", "profile"),
}
"""name -> (module, attribute) of each click command; a module may not exist until its issue lands."""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command: click.Command = getattr(module, target[1])
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="tandem")
def main() -> None:
    """Tandem: train on GPUs, serve on CPUs, placed by measured cost."""
