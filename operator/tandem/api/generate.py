"""`tandem crds`: every file generated from the API models, written or checked against a fresh run.

The CRDs (crdgen) go to manifests/crds and to the chart, the API reference (docgen, which reads the CRDs) to
docs/; this module sits above both so that neither imports the other's caller.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tandem.api import docgen
from tandem.api.crdgen import render
from tandem.api.resources import RESOURCES

CRD_DIRS = (Path("manifests/crds"), Path("charts/tandem/crds"))
"""Where generated CRDs live, relative to the repository root."""

API_REFERENCE = Path("docs/api-reference.md")


def generated_files(root: Path) -> dict[Path, str]:
    """Every generated file (CRDs and the API reference) under the repository root, with its content."""
    files = {
        root / folder / f"{resource.crd_name}.yaml": render(resource)
        for folder in CRD_DIRS
        for resource in RESOURCES
    }
    files[root / API_REFERENCE] = docgen.render()
    return files


def drift(root: Path) -> list[Path]:
    """Generated files whose content differs from a fresh run, or that are missing."""
    return [
        path
        for path, content in generated_files(root).items()
        if not path.exists() or path.read_text() != content
    ]


@click.command("crds")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Repository root.")
@click.option("--check", is_flag=True, help="Fail if the committed CRDs differ from the models.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the CRDs instead of writing them.")
def crds_command(root: Path, check: bool, to_stdout: bool) -> None:
    """Generate the CRDs (manifests/crds, charts/tandem/crds) and docs/api-reference.md from the API models."""
    if to_stdout:
        click.echo("---\n".join(render(resource) for resource in RESOURCES), nl=False)
        return
    if check:
        stale = drift(root)
        if stale:
            for path in stale:
                click.echo(f"stale: {path} (run `tandem crds`)", err=True)
            sys.exit(1)
        click.echo("CRDs match the models")
        return
    for path, content in generated_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        click.echo(f"wrote {path}")
