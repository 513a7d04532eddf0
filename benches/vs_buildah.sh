#!/usr/bin/env bash
# kiln vs rootless buildah: cold builds of the shared benchmark cases, side by side, in one run.
# Prints a markdown table on stdout (progress on stderr).
#
#   sudo benches/vs_buildah.sh                   # 3 runs per cell, median (min–max) reported
#   RUNS=1 CASES=multistage benches/vs_buildah.sh
#   RUNS=1 CASES=multistage BUILDAH=0 benches/vs_buildah.sh   # kiln only (no buildah needed)
#   KILN=/path/to/kiln benches/vs_buildah.sh     # skip `cargo build --release`
#   KEEP=1 benches/vs_buildah.sh                 # keep the work dir (stores, logs, metadata)
#
# Run as root: it builds kiln (as the caller), prepares a work dir owned by $BENCH_USER
# (default kiln-test, which needs a range in /etc/subuid and /etc/subgid) and runs both builders
# as that user through `runuser`. Run as another user, it runs everything as that user.
#
# Inputs: $SHARED_BENCH (default ../shared/bench next to the repo): cases/, make-cases.sh and
# RESULTS-peer.md (buildah's recorded baseline). Nothing there is modified: cases/ and
# make-cases.sh are copied into the work dir and the big contexts are generated there.
# debian-app is not run: it needs the Debian base images that setup-peers.sh makes with
# mmdebstrap and the network.
#
# What is timed (wall clock around the build command; `sync` before each run; page cache hot):
#   kiln cold     fresh store with only the busybox base imported (`kiln import`, untimed), so
#                 the base layer's first unpack into a snapshot is part of the build.
#   kiln repeat   right after the cold build, `kiln rmi RESULT && kiln prune` (untimed), then the
#                 same build again into that store: still a cold build (kiln has no step cache
#                 yet), but with the base snapshot already unpacked, like buildah's cold build.
#   kiln warm     not measured: kiln has no step cache yet.
#   --jobs 1      for the cases in $JOBS1_CASES (default: multistage, the one with independent
#                 stages) kiln cold and kiln repeat are also timed with `kiln build --jobs 1`
#                 (stages one after another), beside the default (`--jobs` = number of cores,
#                 independent stages at once). A kiln without `--jobs` runs stages one after
#                 another anyway: those cells then say n/a.
#   buildah cold  peer.sh's definition: every container and every image except the base removed
#                 (`rm --all`, `rmi`, `rmi --prune`, untimed), then
#                 `buildah bud --layers -q --pull=never --isolation chroot -t localhost/bench/CASE`.
#                 The base is committed into buildah's overlay store from the same rootfs tarball
#                 kiln imports, as 127.0.0.1:5000/busybox:latest (no registry needed, hence
#                 --pull=never; peer.sh used the default --pull=true against a loopback registry).
#                 --isolation chroot because buildah's default isolation (crun + slirp4netns) needs
#                 root-level host fixes on this VM kind (see RESULTS-peer.md); override with
#                 BUILDAH_ISOLATION=oci. Storage: kernel overlay, store in the work dir, passed as
#                 --storage-driver/--root/--runroot flags; HOME and XDG_RUNTIME_DIR point into the
#                 work dir, so nothing is written to the user's home or to system-wide files.
# Both builders give RUN the host network (kiln's default; buildah's chroot isolation).
#
# Env: RUNS (3), CASES ("run-many-files multistage copy-tree"), BENCH_USER (kiln-test),
#      JOBS1_CASES ("multistage"; "" for none), BUILDAH (1; 0 skips buildah),
#      KILN (binary; default: cargo build --release, honouring CARGO_TARGET_DIR),
#      SHARED_BENCH, WORK (default: a new dir under /var/tmp), KEEP, BUILDAH_ISOLATION (chroot),
#      BUDGET_S (520: a case's 2nd, 3rd... round is skipped if, judging by its previous round, it
#      would end later than this many seconds into the benchmark; keeps the whole script under 10
#      minutes on this VM kind's noisy disk; the report says which cases got fewer runs).
set -euo pipefail

RUNS=${RUNS:-3}
CASES=${CASES:-run-many-files multistage copy-tree}
JOBS1_CASES=${JOBS1_CASES-multistage}
BUDGET_S=${BUDGET_S:-520}
# BUILDAH, BENCH_USER, BUILDAH_ISOLATION, SHARED_BENCH, REPO, BASE_NAME; log, die and the helpers
. "$(dirname "$0")/lib.sh"

[ -d "$SHARED_BENCH/cases" ] || die "no $SHARED_BENCH/cases (set SHARED_BENCH)"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

bench_user
grep -q "^$BENCH_USER:" /etc/subuid 2>/dev/null ||
    log "WARNING: $BENCH_USER has no range in /etc/subuid: kiln falls back to a single-id map"

# --- work dir and cleanup ----------------------------------------------------------------------
work_dir kiln-vs-buildah
BSF=(--storage-driver overlay --root "$WORK/buildah/root" --runroot "$WORK/buildah/run")
buildah_cleanup() {
    if command -v buildah >/dev/null && [ -d "$WORK/buildah/root" ]; then
        as_user buildah "${BSF[@]}" rm --all >/dev/null 2>&1 || true
    fi
}

# --- kiln binary -------------------------------------------------------------------------------
kiln_binary
# whether this kiln has `--jobs` (parallel stages): without it, --jobs 1 cells are n/a
if "$K" build --help 2>/dev/null | grep -q -- '--jobs'; then KILN_JOBS=1; else KILN_JOBS=0; fi
jobs1() { [ "$KILN_JOBS" = 1 ] && [[ " $JOBS1_CASES " == *" $1 "* ]]; }

# --- cases: a scratch copy, big contexts generated there ---------------------------------------
log "copying cases into $WORK/bench"
for c in $CASES; do
    [ -d "$SHARED_BENCH/cases/$c" ] || die "no case $c in $SHARED_BENCH/cases"
done
# every case (the others are small), so make-cases.sh's digest is comparable with RESULTS-peer.md's
copy_cases
DIGEST=""
case " $CASES " in
*" copy-tree "*)
    log "make-cases.sh (generates copy-tree's node_modules/ and build-cache/ in the copy)"
    DIGEST=$(make_cases)
    ;;
esac

busybox_base

# --- failures ----------------------------------------------------------------------------------
# (timed and summ, with 2 decimals, are lib.sh's)
FAILURES=()
record_failure() {  # record_failure WHAT CASE LOGFILE
    FAILURES+=("$1|$2|$3")
}

# --- kiln ---------------------------------------------------------------------------------------
KSTORE=$WORK/kiln-store
kiln_fresh_store() {
    rm -rf "$KSTORE"
    as_user "$K" --root "$KSTORE" import "$WORK/bb.tar" "$BASE_NAME" >/dev/null
}
declare -A KCOLD KREP K1COLD K1REP BCOLD NOTES KDEAD K1DEAD BDEAD
# kiln_once CASE I [j1]: one cold and one repeat build, with the default jobs (appends to $KC/$KR)
# or, with j1, with `--jobs 1` (appends to $K1C/$K1R). Metadata: md/CASE[-j1]-cold|repeat-I.json.
kiln_once() {
    local c=$1 i=$2 v=${3:-} ctx=$WORK/bench/cases/$1 t tag what flags=()
    if [ "$v" = j1 ]; then flags=(--jobs 1); tag=$c-j1; what="kiln --jobs 1"; else tag=$c; what=kiln; fi
    kiln_fresh_store
    LOG=$WORK/logs/kiln-$tag-cold-$i.log
    t=$(timed "$K" --root "$KSTORE" build --progress plain "${flags[@]}" \
        --metadata-file "$WORK/md/$tag-cold-$i.json" -t "bench/$c" "$ctx")
    if [ "$v" = j1 ]; then K1C+=" $t"; else KC+=" $t"; fi
    log "$what $c cold #$i: $t"
    if [ "$t" = FAIL ]; then record_failure "$what cold" "$c" "$LOG"; kiln_dead "$c" "$v"; return; fi
    if ! as_user "$K" --root "$KSTORE" rmi "bench/$c" >"$WORK/logs/kiln-$tag-rmi-$i.log" 2>&1 ||
        ! as_user "$K" --root "$KSTORE" prune >>"$WORK/logs/kiln-$tag-rmi-$i.log" 2>&1; then
        record_failure "$what rmi/prune" "$c" "$WORK/logs/kiln-$tag-rmi-$i.log"; kiln_dead "$c" "$v"; return
    fi
    LOG=$WORK/logs/kiln-$tag-repeat-$i.log
    t=$(timed "$K" --root "$KSTORE" build --progress plain "${flags[@]}" \
        --metadata-file "$WORK/md/$tag-repeat-$i.json" -t "bench/$c" "$ctx")
    if [ "$v" = j1 ]; then K1R+=" $t"; else KR+=" $t"; fi
    log "$what $c repeat #$i: $t"
    if [ "$t" = FAIL ]; then record_failure "$what repeat" "$c" "$LOG"; kiln_dead "$c" "$v"; fi
}
kiln_dead() { if [ "${2:-}" = j1 ]; then K1DEAD[$1]=1; else KDEAD[$1]=1; fi; }
kiln_note() {  # the slowest step of the first cold run, for the notes column
    local c=$1 md=$WORK/md/$1-cold-1.json
    [ -f "$md" ] || return 0
    NOTES[$c]+="kiln slowest step: $(jq -r '.["kiln.steps"] | max_by(.seconds) |
        "`\(.instruction | .[0:28] | gsub("\\|"; "\\|"))…` \(.seconds * 100 | round / 100) s"' "$md"); "
}

# --- buildah -----------------------------------------------------------------------------------
BUILDAH_OK=0
BUILDAH_SKIP=""
B() { as_user buildah "${BSF[@]}" "$@"; }
buildah_setup() {
    buildah_usable || return 0
    local err
    err=$(buildah_commit_base "$WORK/buildah" "$WORK/logs/buildah-from.err" B) || { BUILDAH_SKIP=$err; return; }
    # one RUN with the isolation the benchmark uses
    local p=$WORK/bench/probe
    mkdir -p "$p"; printf 'FROM %s\nRUN echo ok\n' "$BASE_NAME" >"$p/Dockerfile"
    [ "$(id -u)" = 0 ] && chown -R "$BENCH_USER:" "$p"
    if ! err=$(B bud -q --pull=never --isolation "$BUILDAH_ISOLATION" "$p" 2>&1); then
        BUILDAH_SKIP="rootless buildah RUN fails with --isolation $BUILDAH_ISOLATION: $( (grep -E 'crun|runc|slirp|cgroup|Error' <<<"$err" || tail -3 <<<"$err") | head -3 | tr '\n' ' ')"
        return
    fi
    # record (not fix) why the default isolation is not used
    if [ "$BUILDAH_ISOLATION" = chroot ]; then
        if err=$(B bud -q --pull=never --layers=false "$p" 2>&1); then
            DEFAULT_ISO_NOTE="buildah's default isolation works here too; chroot kept for comparability"
        else
            DEFAULT_ISO_NOTE="buildah's default isolation fails here without host fixes: $(grep -m1 -oE '(cgroups in hybrid mode[^:]*|open\("/dev/net/tun"\)[^"]*|slirp4netns[^:]*)' <<<"$err" || tail -1 <<<"$err")"
        fi
    fi
    buildah_clean
    BUILDAH_OK=1
}
buildah_clean() {  # peer.sh's clean_cache: every container and every image except the base
    B rm --all >/dev/null 2>&1 || true
    local keep id ids=()
    keep=$(B images -q --no-trunc "$BASE_NAME" 2>/dev/null || true)
    for id in $(B images -a -q --no-trunc 2>/dev/null | sort -u); do
        [ "$id" = "$keep" ] || ids+=("$id")
    done
    [ ${#ids[@]} -eq 0 ] || B rmi -f "${ids[@]}" >/dev/null 2>&1 || true
    B rmi --prune >/dev/null 2>&1 || true
}
buildah_once() {  # buildah_once CASE I: one cold build; appends to $BC
    local c=$1 i=$2 ctx=$WORK/bench/cases/$1 t
    buildah_clean
    LOG=$WORK/logs/buildah-$c-cold-$i.log
    t=$(timed buildah "${BSF[@]}" bud --layers -q --pull=never --isolation "$BUILDAH_ISOLATION" \
        -t "localhost/bench/$c" "$ctx")
    BC+=" $t"; log "buildah $c cold #$i: $t"
    if [ "$t" = FAIL ]; then record_failure "buildah cold" "$c" "$LOG"; BDEAD[$c]=1; fi
}

# buildah's recorded baseline from RESULTS-peer.md: main table (overlay, default isolation) and
# the "overlay, --isolation chroot" variant column
peer_cold() {
    local c=$1 f=$SHARED_BENCH/RESULTS-peer.md def chr
    [ -f "$f" ] || { echo "–"; return; }
    def=$(awk -F'|' -v c="$c" '$2 ~ "^ *" c " *$" { gsub(/^ +| +$/, "", $3); print $3; exit }' "$f")
    chr=$(awk -F'|' -v c="$c cold" '$2 ~ "^ *" c " *$" { gsub(/^ +| +$/, "", $3); print $3; exit }' "$f")
    echo "${def:-–} default; ${chr:-–} chroot"
}

# --- run ---------------------------------------------------------------------------------------
T0=$EPOCHREALTIME
log "buildah: base import and a RUN probe"
buildah_setup
[ -n "$BUILDAH_SKIP" ] && log "SKIP buildah: $BUILDAH_SKIP"
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }'; }
# Runs are interleaved (kiln cold, kiln repeat, [kiln --jobs 1 cold and repeat,] buildah cold; then again) so that drift in this
# VM's I/O speed hits both builders alike. A round beyond a case's first is started only if,
# judging by the case's previous round, it ends within $BUDGET_S seconds of benchmarking; the
# report says which cases got fewer rounds.
TRUNCATED=""
for c in $CASES; do
    what="kiln cold, kiln repeat"
    jobs1 "$c" && what+=", kiln --jobs 1 cold, kiln --jobs 1 repeat"
    if [ "$BUILDAH_OK" = 1 ]; then what+=", buildah cold"; else what+="; buildah skipped"; fi
    log "== $c: $RUNS x ($what)"
    KC="" KR="" K1C="" K1R="" BC=""
    round=0
    for ((i = 1; i <= RUNS; i++)); do
        if [ "$i" -gt 1 ] && [ $(($(elapsed) + round)) -gt "$BUDGET_S" ]; then
            log "time budget ($BUDGET_S s): $c gets $((i - 1)) run(s)"; TRUNCATED+=" $c"; break
        fi
        r0=$(elapsed)
        [ -n "${KDEAD[$c]:-}" ] || kiln_once "$c" "$i"
        if jobs1 "$c" && [ -z "${K1DEAD[$c]:-}" ]; then kiln_once "$c" "$i" j1; fi
        if [ "$BUILDAH_OK" = 1 ] && [ -z "${BDEAD[$c]:-}" ]; then buildah_once "$c" "$i"; fi
        round=$(($(elapsed) - r0))
    done
    KCOLD[$c]=$(summ "$KC"); KREP[$c]=$(summ "$KR")
    if jobs1 "$c"; then
        K1COLD[$c]=$(summ "$K1C"); K1REP[$c]=$(summ "$K1R")
    elif [[ " $JOBS1_CASES " == *" $c "* ]]; then
        K1COLD[$c]="n/a (no --jobs)"; K1REP[$c]="n/a (no --jobs)"
    else
        K1COLD[$c]="–"; K1REP[$c]="–"
    fi
    if [ "$BUILDAH_OK" = 1 ]; then BCOLD[$c]=$(summ "$BC"); else BCOLD[$c]=SKIP; fi
    kiln_note "$c"
done
ELAPSED=$(elapsed)

# --- report ------------------------------------------------------------------------------------
PEER_DIGEST=$(sed -n 's/.*digest `\([0-9a-f]*\)`.*/\1/p' "$SHARED_BENCH/RESULTS-peer.md" 2>/dev/null | head -1 || true)
echo "## kiln vs rootless buildah, cold builds"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}")"
echo "- kiln $("$K" --version 2>/dev/null | awk '{print $2}') ($([ -n "${KILN_GIVEN:-}" ] && echo "binary $KILN_GIVEN" || echo "release build")); buildah ${BUILDAH_VERSION:-not installed}, overlay, --isolation $BUILDAH_ISOLATION; user $BENCH_USER; runs per cell: $RUNS, interleaved (kiln cold, kiln repeat, [kiln --jobs 1 cold, kiln --jobs 1 repeat,] buildah cold, then again): **median (min–max)**, seconds, wall clock"
echo "- cases: copies of $SHARED_BENCH/cases${DIGEST:+ (make-cases.sh digest: $DIGEST; RESULTS-peer.md: $PEER_DIGEST)}; debian-app skipped (needs the mmdebstrap Debian bases, i.e. network)"
echo "- kiln cold = fresh store + imported base (base unpack included); kiln repeat = same store after \`kiln rmi\` + \`kiln prune\` (base snapshot present, still no step cache); buildah cold = peer.sh's cold (build cache emptied, base in the store), \`--pull=never\`"
echo "- kiln warm: n/a (no step cache yet)"
if [ "$KILN_JOBS" = 1 ]; then
    echo "- kiln columns without --jobs: the default jobs (the number of cores: $(nproc)), independent stages at once; --jobs 1 columns (cases:${JOBS1_CASES:+ $JOBS1_CASES}): stages one after another; buildah's own --jobs default is 1"
else
    echo "- this kiln has no \`--jobs\` (stages run one after another): --jobs 1 cells are n/a"
fi
[ -n "${DEFAULT_ISO_NOTE:-}" ] && echo "- $DEFAULT_ISO_NOTE"
[ -n "$BUILDAH_SKIP" ] && echo "- SKIP buildah: $BUILDAH_SKIP"
[ -n "$TRUNCATED" ] && echo "- time budget (BUDGET_S=$BUDGET_S s of benchmarking): fewer than $RUNS runs for:$TRUNCATED (the min–max bracket is missing where only 1 run was made)"
echo
echo "| case | kiln cold s | kiln repeat s | kiln --jobs 1 cold s | kiln --jobs 1 repeat s | buildah cold s (this run) | buildah cold s (RESULTS-peer.md) | notes |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for c in $CASES; do
    echo "| $c | ${KCOLD[$c]} | ${KREP[$c]} | ${K1COLD[$c]} | ${K1REP[$c]} | ${BCOLD[$c]} | $(peer_cold "$c") | ${NOTES[$c]:-}kiln warm: n/a (no step cache yet) |"
done
echo "| debian-app | SKIP | SKIP | SKIP | SKIP | SKIP | $(peer_cold debian-app) | needs the Debian base images (mmdebstrap + network) |"

case " $CASES " in
*" run-many-files "*)
    echo
    echo "### kiln: the big RUN of run-many-files, from --metadata-file (kiln.steps[])"
    echo
    echo "| run | step s | diff_seconds | layer_seconds | rest (sandbox + payload) s | layer MB (compressed) |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for f in "$WORK"/md/run-many-files-*.json; do
        [ -f "$f" ] || continue
        r=$(basename "$f" .json); r=${r#run-many-files-}
        jq -r --arg r "$r" '.["kiln.steps"] | map(select(.instruction | startswith("RUN"))) | max_by(.seconds) |
            "| \($r) | \(.seconds * 100 | round / 100) | \((.diff_seconds // 0) * 100 | round / 100) | \((.layer_seconds // 0) * 100 | round / 100) | \((.seconds - (.diff_seconds // 0) - (.layer_seconds // 0)) * 100 | round / 100) | \((.layer_size // 0) / 1e5 | round / 10) |"' "$f"
    done
    ;;
esac

if [ ${#FAILURES[@]} -gt 0 ]; then
    echo
    echo "### Failures"
    for f in "${FAILURES[@]}"; do
        IFS='|' read -r what c logf <<<"$f"
        echo
        echo "**$what, $c** — Dockerfile:"
        echo '```dockerfile'; cat "$WORK/bench/cases/$c/Dockerfile"; echo '```'
        echo "stderr (last 30 lines):"
        echo '```'; tail -30 "$logf"; echo '```'
    done
fi
echo
echo "total benchmark time: ${ELAPSED} s"
