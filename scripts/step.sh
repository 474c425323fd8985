#!/bin/sh
# One timed step of `make test`: run the command, print the step's wall time.
#   sh scripts/step.sh [--log FILE] [--may-be-empty] NAME -- COMMAND ARGS...
#   sh scripts/step.sh --summary FILE
# --may-be-empty: pytest's "no tests collected" (exit 5) is not a failure (a marker step
# whose tests have not been written yet, or were all deselected).
# --log FILE: the step's name, exit status and seconds are appended to FILE and the step
# itself exits 0, so the later steps still run (a failing profile-kernel test must not hide
# the arm64 results); --summary FILE then prints every step and exits 1 when one failed.
set -u
if [ "${1:-}" = "--summary" ]; then
    echo "==> steps:"
    failed=0
    while IFS='	' read -r status seconds name; do
        printf '    %-45s %3d min %2d s  %s\n' "$name" $((seconds / 60)) $((seconds % 60)) \
            "$([ "$status" -eq 0 ] && echo ok || echo "FAILED (exit $status)")"
        [ "$status" -eq 0 ] || failed=1
    done < "$2"
    exit $failed
fi
log=""
if [ "${1:-}" = "--log" ]; then log=$2; shift 2; fi
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
if [ -n "$log" ]; then
    printf '%s\t%s\t%s\n' "$status" "$((end - start))" "$name" >> "$log"
    exit 0
fi
exit $status
