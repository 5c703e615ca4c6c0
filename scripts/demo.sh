#!/usr/bin/env bash
# Demo on a fresh Debian 12 machine, as root: install, start a local real Slurm with simulated GPUs, run a few jobs
# and print `slurmgpu job` for each.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install.sh"
exec "${SLURMGPU_PREFIX:-/opt/slurmgpu}/bin/python" "$here/scripts/demo.py"
