"""Stores for the price tests: memory, sqlite and a fresh PostgreSQL database per test,
the budget tests' fixtures."""

from tests.budgets.conftest import pg_url, store  # noqa: F401
