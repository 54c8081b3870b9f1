#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it. Brings up the local SLURM cluster when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# Local single-node SLURM for the SLURM tests (docs/local-slurm.md).
# Exit 3 = cannot run here (not root / no apt-get): those tests skip with the reason.
slurm_rc=0; bash jobs/local-cluster.sh up || slurm_rc=$?
if [[ $slurm_rc -ne 0 && $slurm_rc -ne 3 ]]; then
    echo "run-tests: local SLURM did not come up (exit $slurm_rc); SLURM tests will fail" >&2
fi
status=0; .venv/bin/python -m pytest -q "$@" || status=$?
# The MPI tests that matter most again under Open MPI (tests/run-openmpi.sh), after a full
# suite run (not when pytest arguments select tests); MPIMEM_SKIP_OPENMPI=1 leaves it out.
if [[ $# -eq 0 && ${MPIMEM_SKIP_OPENMPI:-0} != 1 ]]; then
    echo "run-tests: the mpi_core tests under Open MPI (tests/run-openmpi.sh)"
    bash tests/run-openmpi.sh || status=$?
fi
exit $status
