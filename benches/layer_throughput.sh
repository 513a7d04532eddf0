#!/usr/bin/env bash
# Layer-writing throughput: kiln (scan + tar + sha256 diffID + compression + sha256 digest, in one
# streaming pass) beside the equivalent shell pipelines. Prints a markdown table.
#
#   benches/layer_throughput.sh            # 3 runs each, best time kept
#   RUNS=1 benches/layer_throughput.sh
#   KEEP=1 benches/layer_throughput.sh     # keep the generated tree (path printed)
#
# MB/s = uncompressed tar size (as kiln writes it) / wall time. The tree is ~200 MB (8000 small
# text files, 4 × 25 MB semi-compressible, 2 × 25 MB random), freshly written, so reads come from
# the page cache.
set -euo pipefail

RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
. benches/lib.sh  # best_time

echo "building (release)..." >&2
cargo build --release --quiet --example layer_bench
BENCH=target/release/examples/layer_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-layer-bench.XXXXXX")
if [[ -z "${KEEP:-}" ]]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "keeping $WORK" >&2
fi
TREE=$WORK/tree
mkdir -p "$TREE"
"$BENCH" gen "$TREE"

echo "running kiln ($RUNS runs each)..." >&2
KILN_OUT=$("$BENCH" run "$TREE" "$RUNS")

# Size everything against kiln's uncompressed tar.
TAR_BYTES=$(awk '$1 == "uncompressed" { print $3 }' <<<"$KILN_OUT")

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

rows=()
add_kiln_row() {
    local name=$1 label=$2
    read -r _ secs tar_bytes blob_bytes _ < <(awk -v n="$name" '$1 == n' <<<"$KILN_OUT")
    rows+=("| $label | $secs | $(mbps "$tar_bytes" "$secs") | $(mb "$blob_bytes") |")
}
add_shell_row() {
    local label=$1 cmd=$2 out_cmd=$3 secs size
    secs=$(best_time "$cmd")
    size=$(bash -c "$out_cmd")
    rows+=("| \`${label//|/\\|}\` | $secs | $(mbps "$TAR_BYTES" "$secs") | $(mb "$size") |")
}

add_kiln_row gzip-6 "kiln gzip-6"
if command -v gzip >/dev/null && command -v sha256sum >/dev/null; then
    echo "running tar | gzip -6 | sha256sum..." >&2
    add_shell_row "tar -C DIR -c . | gzip -6 | sha256sum" \
        "tar -C '$TREE' -c . | gzip -6 | sha256sum" \
        "tar -C '$TREE' -c . | gzip -6 | wc -c"
else
    rows+=("| \`tar \| gzip -6 \| sha256sum\` | skipped: gzip or sha256sum not found | | |")
fi
add_kiln_row zstd-3 "kiln zstd-3 (workers = $(nproc))"
if command -v zstd >/dev/null && command -v sha256sum >/dev/null; then
    echo "running tar | zstd -3 -T0 | sha256sum..." >&2
    add_shell_row "tar -C DIR -c . | zstd -3 -T0 | sha256sum" \
        "tar -C '$TREE' -c . | zstd -q -3 -T0 | sha256sum" \
        "tar -C '$TREE' -c . | zstd -q -3 -T0 | wc -c"
else
    rows+=("| \`tar \| zstd -3 -T0 \| sha256sum\` | skipped: zstd or sha256sum not found | | |")
fi
add_kiln_row uncompressed "kiln uncompressed (tar + sha256)"
if command -v sha256sum >/dev/null; then
    add_shell_row "tar -C DIR -c . | sha256sum" \
        "tar -C '$TREE' -c . | sha256sum" \
        "tar -C '$TREE' -c . | wc -c"
fi

echo
echo "Layer writing, $(mb "$TAR_BYTES") MB tar, $(nproc) cores, best of $RUNS"
echo
echo "| pipeline | seconds | MB/s | blob MB |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
