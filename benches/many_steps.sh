#!/usr/bin/env bash
# Time against the number of steps: `kiln debug parse`, `kiln debug plan` and `kiln build` of a
# `FROM scratch` Dockerfile with N one-variable ENV (or LABEL, or ARG) lines, into a fresh
# store. Prints a markdown table; per-step cost that does not depend on the number of earlier
# steps shows as seconds growing linearly with N.
#
#   benches/many_steps.sh                       # ENV, N = 5000 10000 20000 40000
#   KIND=LABEL SIZES="20000 100000" benches/many_steps.sh
#   KILN=target/release/kiln benches/many_steps.sh
#   LIMIT_S=120 benches/many_steps.sh           # give up on a command after this long
#
# KIND is ENV, LABEL, ARG, or ENVREF (`ENV Vi=${V0}-i`: every line looks a variable up). Each command runs once (timings from `date +%s.%N`); a command that
# runs longer than LIMIT_S (default 300) is stopped and shown as `>LIMIT_S`.
set -euo pipefail

cd "$(dirname "$0")/.."
KILN=${KILN:-target/debug/kiln}
KIND=${KIND:-ENV}
SIZES=${SIZES:-5000 10000 20000 40000}
LIMIT_S=${LIMIT_S:-300}

[[ -x $KILN ]] || { echo "$KILN not found: cargo build first (or set KILN)" >&2; exit 1; }
case $KIND in ENV | LABEL | ARG | ENVREF) ;; *) echo "KIND must be ENV, LABEL, ARG or ENVREF" >&2; exit 1 ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/ctx"

# Runs "$@" with a time limit; prints the seconds, or >LIMIT_S.
timed() {
    local start end
    start=$(date +%s.%N)
    if timeout "$LIMIT_S" "$@" >/dev/null 2>"$work/err"; then
        end=$(date +%s.%N)
        awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
    elif [[ $? == 124 ]]; then
        printf '>%s' "$LIMIT_S"
    else
        echo "failed: $*" >&2
        tail -n 5 "$work/err" >&2
        printf 'error'
    fi
}

echo "kiln: $KILN ($KIND lines, FROM scratch)"
echo
echo "| lines | parse s | plan s | build s | build µs/line |"
echo "| ---: | ---: | ---: | ---: | ---: |"
for n in $SIZES; do
    df=$work/ctx/Dockerfile
    {
        echo "FROM scratch"
        if [[ $KIND == ENVREF ]]; then
            echo "ENV V0=value0"
            for ((i = 1; i < n; i++)); do echo "ENV V$i=\${V0}-$i"; done
        else
            for ((i = 0; i < n; i++)); do echo "$KIND V$i=value$i"; done
        fi
    } >"$df"
    # A fresh store per size, all deleted at the end (never just before a timed build: ext4
    # without a journal is slower to create files right after many were freed).
    parse=$(timed "$KILN" debug parse "$df")
    plan=$(timed "$KILN" debug plan "$df")
    build=$(timed "$KILN" --root "$work/root-$n" build -q "$work/ctx")
    per=$(awk -v b="$build" -v n="$n" 'BEGIN { if (b ~ /^[0-9.]+$/) printf "%.1f", b * 1e6 / n; else printf "n/a" }')
    echo "| $n | $parse | $plan | $build | $per |"
done
