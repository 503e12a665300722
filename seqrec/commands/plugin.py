"""``seqrec plugin``: for plugin authors. ``new`` scaffolds a plugin distribution, ``check``
runs the contract kit on a registered model."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    @cli.group()
    def plugin() -> None:
        """Write model plugins: scaffold one, check one against the contract."""

    @plugin.command("new")
    @click.argument("name")
    @click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="Where to create the seqrec-NAME/ folder.",
    )
    def new(name: str, directory: Path) -> None:
        """Create a model plugin distribution in DIR/seqrec-NAME/ (a working model, tests
        running the contract kit, pyproject with the entry point, README)."""
        from seqrec.scaffold import new_plugin

        target = new_plugin(name, directory)
        click.echo(f"created {target}")
        click.echo(f"next: cd {target} && pip install -e . && pytest && seqrec plugins")

    @plugin.command("check")
    @click.argument("model")
    @click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Hyperparameter.")
    def check(model: str, params: tuple[str, ...]) -> None:
        """Run the contract kit (seqrec.testing.check_plugin) on the registered MODEL."""
        from seqrec.commands.train import parse_params
        from seqrec.contract import CHECKS
        from seqrec.errors import SeqrecError
        from seqrec.models import get_spec
        from seqrec.plugins import get_plugin_manager

        spec = get_spec(model)
        values = parse_params(params)
        failed = 0
        for run in CHECKS:
            try:
                run(model, values)
            except AssertionError as exc:
                failed += 1
                click.secho(f"FAIL {run.__name__}: {exc}", fg="red")
            else:
                click.echo(f"ok   {run.__name__}")
        if failed:
            raise SeqrecError(
                f"{failed} of {len(CHECKS)} contract checks failed for model '{model}' of "
                f"{get_plugin_manager().origin(spec.plugin)}"
            )
