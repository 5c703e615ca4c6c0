#!/usr/bin/env bash
# Install slurmgpu and everything its tests and demo need on a fresh Debian 12 machine (as root):
# Debian packages (Slurm, munge, MariaDB, shellcheck) and a virtualenv at $SLURMGPU_PREFIX (default /opt/slurmgpu)
# built from Debian's python3, readable by every user, since jobs run the `slurmgpu sim` command as their user.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${SLURMGPU_PREFIX:-/opt/slurmgpu}
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server prometheus python3 python3-venv shellcheck)

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install.sh: run as root (it installs Debian packages and starts a local Slurm)" >&2
  exit 1
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  # keep the packages' own services from starting: the tests start private daemons themselves
  policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_created=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
if [ ! -x "$prefix/bin/python" ]; then
  /usr/bin/python3 -m venv "$prefix"
fi
"$prefix/bin/python" -m pip install -q --upgrade pip
# A regular (not editable) install: the hooks and jobs must not depend on this checkout staying readable.
"$prefix/bin/python" -m pip install -q "${here}[dev]"
chmod -R a+rX "$prefix"
echo "slurmgpu installed in $prefix ($("$prefix/bin/slurmgpu" --version))"
