#!/bin/sh
# Prerequisites of vmctl's Slurm and PBS tests on Debian 12: slurm-wlm
# (slurmctld, slurmd, client commands), slurm-wlm-torque (the PBS-style
# qsub/qstat/qdel wrappers over Slurm) and munge. Nothing is started or
# configured here: the tests (or scripts/slurm-local.sh) run a private
# single-host Slurm with all its state under a temporary directory.
#
# Idempotent: does nothing when every command is already there. Must run as
# root when something has to be installed.
#
# usage: scripts/setup-slurm.sh
set -eu

have_all() {
  for c in sbatch squeue scancel sinfo slurmctld slurmd munged munge unmunge qsub qstat qdel; do
    command -v "$c" >/dev/null 2>&1 || return 1
  done
}

if have_all; then
  echo "setup-slurm: already installed: slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null || echo "?")"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-slurm: slurm-wlm is missing and installing it needs root (apt-get install)" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "setup-slurm: needs apt-get (Debian)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
PKGS="slurm-wlm slurm-wlm-torque munge"
if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
  apt-get update -qq
fi
# The postinsts try to start services; without systemd (or with a policy-rc.d
# that denies it) nothing runs, which is what we want.
apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
have_all || { echo "setup-slurm: installed $PKGS but a command is still missing" >&2; exit 1; }
echo "setup-slurm: installed: slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null || echo "?")"
