"""The `tandem` command: one entry point for the operator, the workload runtimes and the tools.

Subcommands load lazily, so `tandem serve` never imports torch and `tandem operator` never imports
onnxruntime: each image installs only the extra it runs.
"""

from __future__ import annotations

import importlib

import click

SUBCOMMANDS: dict[str, tuple[str, str, str | None]] = {
    "operator": ("tandem.controller.main", "operator_command", "operator"),
    "crds": ("tandem.api.generate", "crds_command", None),
    "train": ("tandem.trainer.cli", "train", "train"),
    "serve": ("tandem.server.cli", "serve", "serve"),
    "profile": ("tandem.profiling.cli", "profile", "serve"),
}
"""name -> (module, attribute, extra that installs its dependencies) of each click command."""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute, extra = target
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if extra is None or (missing.name or "").partition(".")[0] == "tandem":
                raise
            raise click.ClickException(
                f"'tandem {cmd_name}' needs the Python package {missing.name!r}: "
                f"install it with pip install 'tandem[{extra}]'"
            ) from None
        command: click.Command = getattr(module, attribute)
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="tandem")
def main() -> None:
    """Tandem: train on GPUs, serve on CPUs, placed by measured cost."""
