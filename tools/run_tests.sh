#!/usr/bin/env bash
# README command 2: builds the environment if it is missing, lints (ruff, configured in
# pyproject.toml; a lint error fails the run before any test), then runs the whole test suite.
#   bash tools/run_tests.sh [pytest args...]
set -e
cd "$(dirname "$0")/.."
source tools/env.sh
ruff check .
exec python -m pytest tests -n "${PYTEST_WORKERS:-2}" "$@"
