#!/usr/bin/env bash
# Run the whole suite. pytest's exit code 5 ("no tests collected") is a failure here.
# Three workers (pytest-xdist) even on two cores: most integration tests wait on server and
# agent processes, so the suite runs in about half the time. FLEETPLANE_TEST_WORKERS=0 runs
# it in one process. Each test file runs whole on one worker (--dist loadfile): many files
# share a server (a module fixture) across tests that build on one another, and two workers
# would each start their own and see half the story.
set -uo pipefail
cd "$(dirname "$0")/.."
workers="${FLEETPLANE_TEST_WORKERS:-3}"
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
fi
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
