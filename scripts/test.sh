#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: installs what it needs, then lint, types and tests
# (unit tests, and tests/cluster, which start a real Slurm with simulated GPUs).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${SLURMGPU_PREFIX:-/opt/slurmgpu}
bash "$here/scripts/install.sh"
bash "$here/scripts/lint.sh"
cd "$here"
exec "$prefix/bin/python" -m pytest -q "$@"
