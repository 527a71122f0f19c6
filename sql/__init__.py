"""The numbered migrations, shipped as the package ``sinks.sql`` (see pyproject.toml)."""
