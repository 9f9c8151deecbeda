"""``feedstream``: the operators' command (typer, rich tables).

Each group of commands lives in its own module and registers itself on :data:`app`; :func:`main`
imports them, so ``feedstream --help`` lists everything and a module costs nothing until it is used.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="feedstream",
    help="Operate a feedstream pipeline: status, dead letters, topics, tenants, triggers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """A group even with one command registered (typer would make that one command the program)."""


#: The modules that add commands to ``app`` (imported by ``main``).
COMMAND_MODULES: tuple[str, ...] = ("pipeline.ops.status", "pipeline.ops.dlq", "pipeline.ops.admin")


def load_commands() -> typer.Typer:
    """``app`` with every command module's commands registered (tests call this, then invoke)."""
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    return app


def main() -> None:
    load_commands()()
