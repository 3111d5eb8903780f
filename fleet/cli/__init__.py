"""The ``fleet`` operator CLI (Typer), one module per noun; see fleet.cli.app."""
