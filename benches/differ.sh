#!/usr/bin/env bash
# The RUN differ beside plain tar pipelines on the same directory. Prints a markdown table.
#
#   sudo benches/differ.sh                     # both snapshotters, 3 runs of each pipeline
#   SNAPSHOTTERS=overlay RUNS=1 benches/differ.sh
#   BASE_MB=1000 benches/differ.sh             # case B on a 1 GB base (default 300 MB)
#   KEEP=1 benches/differ.sh                   # keep the work directory (path printed)
#
# Case A: on busybox, a RUN that writes FILES (20,000) small files in nested directories, then a
# RUN that writes a 200 MB file. Case B: on busybox, a RUN that writes BASE_MB across files
# (a third of it in /big), then a RUN that changes one byte of /big.
#
# For every RUN step, from `kiln build --metadata-file` (`kiln.steps`): the seconds kiln spent in
# the differ (`diff_seconds`: diff_upperdir with overlay, diff_trees with the copy snapshotter),
# writing the layer (`layer_seconds`: tar, diffID, gzip -6, digest) and the whole step
# (`seconds`: the command itself, and with the copy snapshotter the copy). Beside them, the best of
# RUNS timings of `tar -C SNAPSHOT -c . | gzip -6 | sha256sum` and `tar -C SNAPSHOT -c . |
# sha256sum` on the step's snapshot, `<root>/snapshots/<hex of diff_id>/` (with overlay, the
# step's upper directory: exactly what the differ read). The copy snapshotter keeps no such
# directory, so its tar columns say n/a. Everything runs warm (page cache), as kiln's differ
# does right after the step.
#
# Needs root (overlay mounts, and a clean comparison without user-namespace id mapping), jq,
# gzip, sha256sum, and busybox-static for the base image.
set -euo pipefail

RUNS=${RUNS:-3}
FILES=${FILES:-20000}
BASE_MB=${BASE_MB:-300}
SNAPSHOTTERS=${SNAPSHOTTERS:-overlay copy}

if [[ $(id -u) != 0 ]]; then
    echo "run as root: benches/differ.sh mounts overlays and compares on real ids" >&2
    exit 1
fi
for tool in jq gzip sha256sum tar; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done

cd "$(dirname "$0")/.."
REPO=$PWD
. benches/lib.sh  # best_time
echo "building kiln (release)..." >&2
cargo build --release --quiet --bin kiln
KILN=${CARGO_TARGET_DIR:-$REPO/target}/release/kiln
[[ $KILN = /* ]] || KILN=$REPO/$KILN

WORK=$(mktemp -d /tmp/kiln-differ-bench.XXXXXX)
if [[ -z "${KEEP:-}" ]]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "keeping $WORK" >&2
fi

"$REPO/scripts/make-busybox-rootfs.sh" "$WORK/busybox.tar" >&2

# Case A: many small files, then one big file (separate steps, so each has its own row).
DIRS=$(( (FILES + 199) / 200 ))
mkdir -p "$WORK/ctx-a"
cat >"$WORK/ctx-a/Dockerfile" <<EOF
FROM busybox
RUN for i in \$(seq $DIRS); do mkdir -p /many/\$i/sub && for j in \$(seq 200); do echo "file \$i \$j" > /many/\$i/sub/f\$j; done; done
RUN dd if=/dev/urandom of=/big bs=1M count=200 2>/dev/null
EOF

# Case B: a large base, then one byte changed in its biggest file.
BIG_MB=$(( BASE_MB / 3 ))
PARTS=$(( (BASE_MB - BIG_MB + 19) / 20 ))
mkdir -p "$WORK/ctx-b"
cat >"$WORK/ctx-b/Dockerfile" <<EOF
FROM busybox
RUN mkdir /data && for i in \$(seq $PARTS); do dd if=/dev/urandom of=/data/part\$i bs=1M count=20 2>/dev/null; done && dd if=/dev/urandom of=/big bs=1M count=$BIG_MB 2>/dev/null
RUN printf x | dd of=/big conv=notrunc bs=1 seek=1000 2>/dev/null
EOF

secs() { awk -v s="$1" 'BEGIN { printf "%.3f", s }'; }

rows=()
run_case() {
    local case=$1 ctx=$2 snapshotter=$3
    # A fresh store per build: nothing cached, snapshots only of this build.
    local store=$WORK/store-$case-$snapshotter meta=$WORK/meta-$case-$snapshotter.json
    local log=$WORK/build-$case-$snapshotter.log
    "$KILN" --root "$store" import "$WORK/busybox.tar" busybox:latest >/dev/null
    echo "case $case, $snapshotter snapshotter: building..." >&2
    if ! KILN_SNAPSHOTTER=$snapshotter "$KILN" --root "$store" build --progress plain \
        --metadata-file "$meta" -t "bench-${case,,}:latest" "$ctx" >"$log" 2>&1; then
        echo "kiln build failed (case $case, $snapshotter):" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    local n=0
    while IFS=$'\t' read -r instruction step_s diff_s layer_s diff_id; do
        n=$((n + 1))
        local label=${instruction:0:60}
        [[ ${#instruction} -gt 60 ]] && label="$label…"
        label=${label//|/\\|}
        local snap=$store/snapshots/${diff_id#sha256:}
        local size="n/a" gz="n/a" plain="n/a"
        if [[ -d $snap ]]; then
            echo "  step $n: tar pipelines on $(du -sh "$snap" | cut -f1)..." >&2
            size="$(du -sb "$snap" | awk '{ printf "%.1f", $1 / 1e6 }') MB, $(find "$snap" | wc -l) entries"
            gz=$(best_time "tar -C '$snap' -c . | gzip -6 | sha256sum")
            plain=$(best_time "tar -C '$snap' -c . | sha256sum")
        fi
        rows+=("| $case | \`$label\` | $snapshotter | $size | $(secs "$step_s") | $(secs "$diff_s") | $(secs "$layer_s") | $gz | $plain |")
    done < <(jq -r '.["kiln.steps"][] | select(.diff_seconds != null)
                    | [.instruction, .seconds, .diff_seconds, .layer_seconds, (.diff_id // "")] | @tsv' "$meta")
    if [[ $n == 0 ]]; then
        echo "no RUN step records (diff_seconds) in $meta" >&2
        exit 1
    fi
    rm -rf "$store"
}

for snapshotter in $SNAPSHOTTERS; do
    run_case A "$WORK/ctx-a" "$snapshotter"
    run_case B "$WORK/ctx-b" "$snapshotter"
done

echo
echo "kiln differ vs tar on the same snapshot ($(nproc) cores; tar pipelines: best of $RUNS; seconds)"
echo
echo "| case | RUN | snapshotter | snapshot (apparent size, entries) | kiln step total | kiln differ | kiln layer write (gzip -6) | \`tar -c \| gzip -6 \| sha256sum\` | \`tar -c \| sha256sum\` |"
echo "|---|---|---|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
