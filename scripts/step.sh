#!/bin/sh
# One timed step of `make test`: run the command, print the step's wall time, pass its
# exit status on.  --may-be-empty: pytest's "no tests collected" (exit 5) is not a failure
# (a marker step whose tests have not been written yet, or were all deselected).
#   sh scripts/step.sh [--may-be-empty] NAME -- COMMAND ARGS...
set -u
empty_ok=0
if [ "${1:-}" = "--may-be-empty" ]; then empty_ok=1; shift; fi
name=$1; shift
[ "${1:-}" = "--" ] && shift
start=$(date +%s)
echo "==> step: $name"
"$@"
status=$?
if [ "$status" -eq 5 ] && [ "$empty_ok" -eq 1 ]; then
    echo "==> step: $name: no tests collected"
    status=0
fi
end=$(date +%s)
echo "==> step: $name: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s (exit $status)"
exit $status
