"""Alembic migrations of the scope-recorder log. This package belongs to Alembic alone."""
