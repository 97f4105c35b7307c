#!/usr/bin/env bash
# Installs everything into .venv (tools/install.sh), runs the linter (ruff.toml) and the test suite (which also
# builds the docs site with warnings as errors, tests/test_docs.py). `.ci/run` calls exactly this.
# pytest's exit code 5 (no tests collected) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
echo "[test] ruff check"
.venv/bin/ruff check fastroar tools tests
set +e
.venv/bin/python -m pytest -q tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "tools/test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
