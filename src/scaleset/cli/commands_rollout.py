"""(stub, session 4: filled in by issue 5's rollout work)"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="(not yet built)")
