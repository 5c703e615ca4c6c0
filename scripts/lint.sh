#!/usr/bin/env bash
# Lint, format check, types and shellcheck (what scripts/test.sh runs before the tests).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${SLURMGPU_PREFIX:-/opt/slurmgpu}
cd "$here"
"$prefix/bin/ruff" check src tests bench scripts
"$prefix/bin/ruff" format --check src tests bench scripts
"$prefix/bin/mypy"
shellcheck prolog/slurmgpu-prolog epilog/slurmgpu-epilog scripts/*.sh
