#!/usr/bin/env bash
# The step cache, kiln vs rootless `buildah bud --layers`, side by side on the same Dockerfiles
# and contexts, in one run. Prints a markdown table on stdout (progress on stderr).
#
#   sudo benches/cache_warm.sh                    # RUNS=5, a 100,000-file context
#   RUNS=1 FILES=10000 benches/cache_warm.sh      # a quick check (a few minutes)
#   KILN=/path/to/kiln BUILDAH=0 benches/cache_warm.sh
#
# Rows (wall clock around the build command, `sync` before each; page cache hot; every cell the
# median (min–max) of RUNS runs; kiln and buildah runs interleaved, kiln first in each round):
#   copy-tree cold        a fresh store per run (kiln: a new store with only the busybox base
#                         imported; buildah: a new --root with only the base committed), both
#                         made untimed; nothing is deleted before a timed build.
#   copy-tree warm        one store per builder, warmed by an untimed build of the same
#                         Dockerfile, reused by every warm run: nothing changed since the last build.
#   warm, 1 edit deps     a unique line appended to one file inside node_modules/ (the 20,000-file
#                         COPY), then both builders build: that COPY and what follows re-run.
#   warm, 1 edit src      a unique line appended to src/index.js: COPY src/ and the RUN re-run.
#   stat walk             `find CTX -printf '%s %T@ %m %U %G %i\n'` (an lstat of every entry of
#                         the context, build-cache/ included): the floor for a warm no-change build.
#   FILES-file context    FILES files (context_digest.sh's generator: 100 per directory, 64 B –
#                         4 KiB, `*.log` ignored), `COPY files/ /files/` + a RUN that counts them.
#                         Cold is the warming build of each warm store: 1 run (buildah's is slow).
#   context hashing       benches/context_digest.sh run with the same FILES (kiln's digester
#                         alone, through examples/context_digest.rs; its own best-of-RUNS table).
#
# kiln builds with --metadata-file: every warm run must report every keyed step `cached` (and an
# edit run must reuse exactly the steps before the edited COPY and re-run that COPY), else the
# bench stops with the step list: it never silently measures a miss. buildah runs without -q and
# its log must say `Using cache` for every step of a no-change build (recorded in the notes; a
# missing hit is reported, not fatal: it is buildah's time either way).
#
# Disk caveat (ext4 without a journal, as on this VM kind): creating files soon after many files
# were deleted is slow (ext4 skips each recently deleted inode while allocating), so nothing is
# deleted by this script before a timed build (fresh directories per run, all removed at the
# end); buildah's own warm builds do delete their working containers, which can slow the next
# build's file creation (kiln's edit rows): the report prints kiln's COPY step seconds per run.
#
# Run as root: the builders run as $BENCH_USER (kiln-test) through `runuser`, with HOME and
# XDG_RUNTIME_DIR in the work dir, like vs_buildah.sh (same buildah flags: overlay, --pull=never,
# --isolation chroot; see vs_buildah.sh's header for why).
#
# Env: RUNS (5), FILES (100000), BENCH_USER (kiln-test), BUILDAH (1; 0 skips buildah),
#      BUILDAH_ISOLATION (chroot), KILN (binary; default: cargo build --release),
#      DIGEST (1; 0 skips context_digest.sh), SHARED_BENCH, WORK, KEEP.
set -euo pipefail

RUNS=${RUNS:-5}
FILES=${FILES:-100000}
DIGEST=${DIGEST:-1}
# BUILDAH, BENCH_USER, BUILDAH_ISOLATION, SHARED_BENCH, REPO, BASE_NAME; log, die and the helpers
. "$(dirname "$0")/lib.sh"
TIME_DIGITS=3  # warm builds take well under a second

[ -d "$SHARED_BENCH/cases/copy-tree" ] || die "no $SHARED_BENCH/cases/copy-tree (set SHARED_BENCH)"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

bench_user

# --- work dir and cleanup ----------------------------------------------------------------------
work_dir kiln-cache-warm
bflags() { echo "--storage-driver overlay --root $WORK/buildah/$1/root --runroot $WORK/buildah/$1/run"; }
buildah_cleanup() {
    command -v buildah >/dev/null || return 0
    local r
    for r in "$WORK"/buildah/*/root; do
        [ -d "$r" ] || continue
        r=${r%/root}; r=${r##*/}
        # shellcheck disable=SC2046
        as_user buildah $(bflags "$r") rm --all >/dev/null 2>&1 || true
    done
}

# --- kiln binary -------------------------------------------------------------------------------
kiln_binary
mkdir -p "$WORK/kiln" "$WORK/buildah"

# --- contexts ----------------------------------------------------------------------------------
log "copy-tree: copying the cases, make-cases.sh"
copy_cases
CASES_DIGEST=$(make_cases)
CT=$WORK/bench/cases/copy-tree
EDIT_DEPS=node_modules/pkg-0200/lib/m15.js  # what ../shared/bench/cases/warm-edit/edit.sh edits
EDIT_SRC=src/index.js
[ -f "$CT/$EDIT_DEPS" ] && [ -f "$CT/$EDIT_SRC" ] || die "copy-tree lacks $EDIT_DEPS or $EDIT_SRC"

# the FILES-file context: context_digest.sh's generator, under files/
BIG=$WORK/bench/big
log "generating $FILES files in $BIG/files"
mkdir -p "$BIG/files"
gen_files "$FILES" "$BIG/files"
printf '**/*.log\n' >"$BIG/.dockerignore"
cat >"$BIG/Dockerfile" <<EOF
FROM $BASE_NAME
COPY files/ /files/
RUN echo "files: \$(find /files -type f | wc -l)"
EOF
BIG_ENTRIES=$(find "$BIG" | wc -l)
CT_ENTRIES=$(find "$CT" | wc -l)

busybox_base
# the racy rule: files modified in the second the digest index is written are re-hashed, so let
# every context file be older than the first build's index
sleep 1.1

# --- timing helpers ----------------------------------------------------------------------------
# (timed, med and summ are lib.sh's; TIME_DIGITS=3 above)
# ratio A B over the medians of two series ("–" when either is missing or failed)
ratio() {
    [[ " $1 $2 " == *" FAIL "* ]] && { echo "–"; return; }
    local a b
    a=$(med "$1"); b=$(med "$2")
    [ -n "$a" ] && [ -n "$b" ] || { echo "–"; return; }
    awk -v a="$a" -v b="$b" 'BEGIN { r = a / b; printf (r < 0.1 ? "%.3f×" : "%.2f×"), r }'
}
fail_with_log() {  # fail_with_log WHAT LOGFILE [METADATA]
    {
        echo "cache_warm: $1"
        [ -n "${3:-}" ] && [ -f "$3" ] &&
            jq -r '.["kiln.steps"][] | "  \(.location) cached=\(.cached) key=\(.key != null) \(.instruction[0:60]) \(.reason // "")"' "$3"
        echo "--- last lines of $2:"; tail -20 "$2"
    } >&2
    exit 1
}

# --- kiln ---------------------------------------------------------------------------------------
kiln_store() {  # kiln_store DIR: a new store with only the base imported
    as_user "$K" --root "$1" import "$WORK/bb.tar" "$BASE_NAME" >/dev/null
}
# kiln_build STORE CTX NAME MDTAG: a timed build; prints the seconds (FAIL stops the bench)
kiln_build() {
    local store=$1 ctx=$2 name=$3 md=$WORK/md/$4.json t
    LOG=$WORK/logs/kiln-$4.log
    t=$(timed "$K" --root "$store" build --progress plain --metadata-file "$md" -t "bench/$name" "$ctx")
    [ "$t" = FAIL ] && fail_with_log "kiln build $4 failed" "$LOG"
    echo "$t"
}
# check_all_cached MDTAG: every keyed step was reused
check_all_cached() {
    local md=$WORK/md/$1.json
    jq -e '.["kiln.steps"] | map(select(.key != null)) | length > 0 and all(.cached)' "$md" >/dev/null ||
        fail_with_log "kiln $1: a keyed step was not cached in a warm no-change build" "$WORK/logs/kiln-$1.log" "$md"
}
# check_edit MDTAG PREFIX: the keyed steps before the COPY starting with PREFIX were reused, that
# COPY and every keyed step after it re-ran
check_edit() {
    local md=$WORK/md/$1.json
    jq -e --arg p "$2" '.["kiln.steps"] | map(select(.key != null)) as $s
        | ($s | map(.instruction | startswith($p)) | index(true)) as $i
        | $i != null and ($s[:$i] | all(.cached)) and ($s[$i:] | all(.cached | not))' "$md" >/dev/null ||
        fail_with_log "kiln $1: after editing a file under \`${2#COPY }\` the steps before it must be cached and it and the steps after it re-run" \
            "$WORK/logs/kiln-$1.log" "$md"
}
keyed_steps() { jq '[.["kiln.steps"][] | select(.key != null)] | length' "$WORK/md/$1.json"; }
# the seconds of kiln's slowest step in a run, and the rest (process, base resolution, image write)
kiln_split() {
    jq -r '.["kiln.steps"] | (map(.seconds) | add) as $s | max_by(.seconds) |
        "steps \($s * 1000 | round) ms, slowest \(.instruction[0:24]) \(.seconds * 1000 | round) ms"' "$WORK/md/$1.json"
}

# --- buildah -----------------------------------------------------------------------------------
BUILDAH_OK=0
BUILDAH_SKIP=""
# B ROOT ARGS...: buildah as the bench user on store ROOT
B() { local r=$1; shift; as_user buildah $(bflags "$r") "$@"; }
# buildah_store ROOT: a new store with only the base committed
buildah_store() {
    buildah_commit_base "$WORK/buildah/$1" "$WORK/logs/buildah-from-$1.err" B "$1"
}
buildah_setup() {
    buildah_usable || return 0
    local err
    err=$(buildah_store warm) || { BUILDAH_SKIP=$err; return; }
    BUILDAH_OK=1
}
# buildah_build ROOT CTX NAME TAG: a timed build; prints the seconds or FAIL
buildah_build() {
    local t
    LOG=$WORK/logs/buildah-$4.log
    # shellcheck disable=SC2046
    t=$(timed buildah $(bflags "$1") bud --layers --pull=never --isolation "$BUILDAH_ISOLATION" \
        -t "localhost/bench/$3" "$2")
    # (a command substitution: failures are collected in a file)
    if [ "$t" = FAIL ]; then echo "$4|$LOG" >>"$WORK/logs/buildah-failures"; fi
    echo "$t"
}
# how many steps of a buildah log were cache hits, of how many (FROM is never "Using cache")
buildah_hits() {
    local f=$WORK/logs/buildah-$1.log
    echo "$(grep -c -- '--> Using cache' "$f" || true)/$(grep '^STEP [0-9]' "$f" | grep -vc '^STEP [0-9/]*: FROM ' || true)"
}
BMISS=()  # buildah no-change runs that were not all hits

# --- run ---------------------------------------------------------------------------------------
T0=$EPOCHREALTIME
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }'; }
log "buildah: a store with the base committed"
buildah_setup
[ -n "$BUILDAH_SKIP" ] && log "SKIP buildah: $BUILDAH_SKIP"

KWS=$WORK/kiln/warm
kiln_store "$KWS"

# copy-tree cold, and the warm stores' warming builds (untimed as far as the table goes)
KC="" BC="" KW="" BW="" KD="" BD="" KS="" BS="" SW="" KDCOPY=""
log "== copy-tree: $RUNS x (kiln cold, buildah cold) on fresh stores"
for ((i = 1; i <= RUNS; i++)); do
    kiln_store "$WORK/kiln/cold-$i"
    t=$(kiln_build "$WORK/kiln/cold-$i" "$CT" copy-tree "ct-cold-$i"); KC+=" $t"; log "kiln cold #$i: $t"
    if [ "$BUILDAH_OK" = 1 ]; then
        err=$(buildah_store "cold-$i") || die "$err"
        t=$(buildah_build "cold-$i" "$CT" copy-tree "ct-cold-$i"); BC+=" $t"; log "buildah cold #$i: $t"
    fi
done
log "warming: kiln and buildah build copy-tree once into their warm stores"
kiln_build "$KWS" "$CT" copy-tree ct-warmup >/dev/null
[ "$BUILDAH_OK" = 1 ] && buildah_build warm "$CT" copy-tree ct-warmup >/dev/null
sleep 1.1  # (the racy rule again, for the warm-up's index)

log "== copy-tree warm: $RUNS x (stat walk, kiln, buildah no change; edit deps; kiln, buildah; edit src; kiln, buildah)"
for ((i = 1; i <= RUNS; i++)); do
    LOG=$WORK/logs/statwalk-$i.log
    t=$(timed find "$CT" -printf '%s %T@ %m %U %G %i\n'); SW+=" $t"
    t=$(kiln_build "$KWS" "$CT" copy-tree "ct-warm-$i"); check_all_cached "ct-warm-$i"; KW+=" $t"
    log "stat walk #$i: ${SW##* }; kiln warm #$i: $t ($(kiln_split "ct-warm-$i"))"
    if [ "$BUILDAH_OK" = 1 ]; then
        t=$(buildah_build warm "$CT" copy-tree "ct-warm-$i"); BW+=" $t"
        h=$(buildah_hits "ct-warm-$i"); [ "${h%/*}" = "${h#*/}" ] || BMISS+=("copy-tree warm #$i: $h hits")
        log "buildah warm #$i: $t (cache hits $h)"
    fi
    # a unique edit (the previous round's result must not be hit), applied once for both builders
    echo "// edit deps $i $$" >>"$CT/$EDIT_DEPS"
    t=$(kiln_build "$KWS" "$CT" copy-tree "ct-deps-$i"); check_edit "ct-deps-$i" "COPY node_modules/"; KD+=" $t"
    KDCOPY+=" $(jq -r '.["kiln.steps"][] | select(.instruction | startswith("COPY node_modules/")) |
        "\(.seconds * 100 | round / 100) (layer \(.layer_seconds * 100 | round / 100))"' "$WORK/md/ct-deps-$i.json" | tr ' ' '_')"
    log "kiln edit deps #$i: $t ($(kiln_split "ct-deps-$i"))"
    if [ "$BUILDAH_OK" = 1 ]; then
        t=$(buildah_build warm "$CT" copy-tree "ct-deps-$i"); BD+=" $t"; log "buildah edit deps #$i: $t (cache hits $(buildah_hits "ct-deps-$i"))"
    fi
    echo "// edit src $i $$" >>"$CT/$EDIT_SRC"
    t=$(kiln_build "$KWS" "$CT" copy-tree "ct-src-$i"); check_edit "ct-src-$i" "COPY src/"; KS+=" $t"
    log "kiln edit src #$i: $t ($(kiln_split "ct-src-$i"))"
    if [ "$BUILDAH_OK" = 1 ]; then
        t=$(buildah_build warm "$CT" copy-tree "ct-src-$i"); BS+=" $t"; log "buildah edit src #$i: $t (cache hits $(buildah_hits "ct-src-$i"))"
    fi
    sleep 1.1  # the edited files out of the index's racy second before the next no-change build
done
CT_KEYED=$(keyed_steps ct-warm-1)

# the FILES-file context: cold = the warming build (1 run each), then RUNS warm no-change rounds
log "== $FILES-file context: kiln cold (warm-up), buildah cold (warm-up)"
KBC=$(kiln_build "$KWS" "$BIG" big big-cold); log "kiln cold: $KBC"
BBC=""
if [ "$BUILDAH_OK" = 1 ]; then
    BBC=$(buildah_build warm "$BIG" big big-cold); log "buildah cold: $BBC"
fi
sleep 1.1
KBW="" BBW="" SBW=""
log "== $FILES-file context warm: $RUNS x (stat walk, kiln, buildah)"
for ((i = 1; i <= RUNS; i++)); do
    LOG=$WORK/logs/statwalk-big-$i.log
    t=$(timed find "$BIG" -printf '%s %T@ %m %U %G %i\n'); SBW+=" $t"
    t=$(kiln_build "$KWS" "$BIG" big "big-warm-$i"); check_all_cached "big-warm-$i"; KBW+=" $t"
    log "stat walk #$i: ${SBW##* }; kiln warm #$i: $t ($(kiln_split "big-warm-$i"))"
    if [ "$BUILDAH_OK" = 1 ]; then
        t=$(buildah_build warm "$BIG" big "big-warm-$i"); BBW+=" $t"
        h=$(buildah_hits "big-warm-$i"); [ "${h%/*}" = "${h#*/}" ] || BMISS+=("$FILES-file warm #$i: $h hits")
        log "buildah warm #$i: $t (cache hits $h)"
    fi
done
BIG_KEYED=$(keyed_steps big-warm-1)
BENCH_S=$(elapsed)

# context hashing alone: context_digest.sh with the same FILES (its own generated context)
DIGEST_TABLE=""
if [ "$DIGEST" = 1 ]; then
    log "== context_digest.sh FILES=$FILES RUNS=$RUNS"
    DIGEST_TABLE=$(cd "$REPO" && FILES=$FILES RUNS=$RUNS "$REPO/benches/context_digest.sh" 2>"$WORK/logs/context_digest.err") ||
        { tail -20 "$WORK/logs/context_digest.err" >&2; die "context_digest.sh failed"; }
fi
ELAPSED=$(elapsed)

# --- report ------------------------------------------------------------------------------------
bcell() { if [ "$BUILDAH_OK" = 1 ]; then summ "$1"; else echo SKIP; fi; }
# goal_met RATIO-SERIES-A SERIES-B MAX [WALK-SERIES MAX]: "met" or "NOT met"
goal_met() {
    [[ " $1 $2 ${4:-} " == *" FAIL "* ]] && { echo "–"; return; }
    [ -n "$(med "$1")" ] && [ -n "$(med "$2")" ] || { echo "–"; return; }
    local ok
    ok=$(awk -v a="$(med "$1")" -v b="$(med "$2")" -v m="$3" 'BEGIN { print (a / b <= m) }')
    if [ -n "${4:-}" ]; then
        ok=$((ok & $(awk -v a="$(med "$1")" -v b="$(med "$4")" -v m="$5" 'BEGIN { print (a / b <= m) }')))
    fi
    if [ "$ok" = 1 ]; then echo "met"; else echo "**NOT met**"; fi
}
x_walk() { awk -v a="$(med "$1")" -v b="$(med "$2")" 'BEGIN { printf "%.1f× the stat walk", a / b }'; }
digest_row() {  # digest_row LABEL: the seconds column of context_digest.sh's row LABEL
    awk -F'|' -v l="$1" '$2 ~ "^ *" l " *$" { gsub(/ /, "", $3); print $3; exit }' <<<"$DIGEST_TABLE"
}
echo "## The step cache: kiln vs rootless \`buildah bud --layers\`, cold and warm"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}")"
echo "- kiln $("$K" --version 2>/dev/null | awk '{print $2}') ($([ -n "$KILN_GIVEN" ] && echo "binary $KILN_GIVEN" || echo "release build")); buildah ${BUILDAH_VERSION:-not installed}, overlay, \`--layers --pull=never --isolation $BUILDAH_ISOLATION\`; user $BENCH_USER"
echo "- seconds, wall clock around the build command, \`sync\` before each, page cache hot: **median (min–max)** of $RUNS run(s), kiln and buildah interleaved; ratios are of the medians"
echo "- copy-tree: ../shared/bench/cases/copy-tree (make-cases.sh digest ${CASES_DIGEST:-?}), $CT_ENTRIES entries in the context (build-cache/ and \*\*/\*.log excluded by .dockerignore), $CT_KEYED keyed steps (WORKDIR, 3 COPY, RUN); FILES-file context: $FILES files in $((FILES / 100)) directories (context_digest.sh's generator), \`COPY files/ /files/\` + a RUN, $BIG_ENTRIES entries"
echo "- cold: a new store per run holding only the busybox base (kiln: imported, so the build unpacks it; buildah: committed); warm: one store per builder, warmed by an untimed build, reused by every warm run; an edit row appends a unique line to one file, then both builders build"
echo "- every kiln warm run was checked through \`--metadata-file\`: no change ⇒ every keyed step \`cached\`; an edit ⇒ the steps before the edited COPY cached, that COPY and the rest re-run"
if [ "$BUILDAH_OK" = 1 ]; then
    if [ ${#BMISS[@]} -eq 0 ]; then
        echo "- buildah's no-change runs: every step \`Using cache\`"
    else
        echo "- buildah's no-change runs that were NOT all hits: ${BMISS[*]}"
    fi
fi
[ -n "$BUILDAH_SKIP" ] && echo "- SKIP buildah: $BUILDAH_SKIP"
echo
echo "| case | kiln s | buildah s | kiln / buildah | goal | notes |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| copy-tree cold | $(summ "$KC") | $(bcell "$BC") | $(ratio "$KC" "$BC") | | fresh store per run |"
echo "| copy-tree warm, no change | $(summ "$KW") | $(bcell "$BW") | $(ratio "$KW" "$BW") | ≤ 0.05× buildah and ≤ 3× the stat walk: $(goal_met "$KW" "$BW" 0.05 "$SW" 3) | kiln: $(x_walk "$KW" "$SW") |"
echo "| copy-tree warm, 1 file edited in node_modules/ | $(summ "$KD") | $(bcell "$BD") | $(ratio "$KD" "$BD") | ≤ 0.1× buildah: $(goal_met "$KD" "$BD" 0.1) | re-runs the 20,000-file COPY and the RUN |"
echo "| copy-tree warm, src/index.js edited | $(summ "$KS") | $(bcell "$BS") | $(ratio "$KS" "$BS") | ≤ 0.1× buildah: $(goal_met "$KS" "$BS" 0.1) | re-runs COPY src/ and the RUN |"
echo "| copy-tree context stat walk (\`find -printf\`, as $BENCH_USER) | $(summ "$SW") | – | – | floor | $CT_ENTRIES entries |"
echo "| $FILES-file context cold (1 run: the warm store's warming build) | $(summ "$KBC") | $(bcell "$BBC") | $(ratio "$KBC" "$BBC") | | kiln's warm store already holds copy-tree's base snapshot; so does buildah's |"
echo "| $FILES-file context warm, no change | $(summ "$KBW") | $(bcell "$BBW") | $(ratio "$KBW" "$BBW") | | kiln: $(x_walk "$KBW" "$SBW") |"
echo "| $FILES-file context stat walk | $(summ "$SBW") | – | – | floor | $BIG_ENTRIES entries |"
if [ -n "$DIGEST_TABLE" ]; then
    echo "| context hashing, $FILES files, digest cache cold (no index; best of $RUNS) | $(digest_row 'cold \(no index\)') | n/a | – | | kiln's digester alone, context_digest.sh |"
    echo "| context hashing, $FILES files, digest cache warm (no change; best of $RUNS) | $(digest_row 'warm, no change') | n/a | – | | kiln's digester alone, context_digest.sh |"
fi
echo
echo "kiln's time inside the steps (from --metadata-file, first run of each row): warm no change $(kiln_split ct-warm-1); edit node_modules $(kiln_split ct-deps-1); edit src $(kiln_split ct-src-1); $FILES-file warm $(kiln_split big-warm-1)."
echo
echo "kiln's \`COPY node_modules/\` step in the node_modules/ edit rows, seconds per run (of which writing the layer): ${KDCOPY//_/ }. The rest of that step is reading 20,000 files and creating them in the new snapshot; on this ext4 without a journal, creating inodes right after many were deleted (buildah's warm builds perform the COPY into a working container and delete it) is slow: ext4 skips recently deleted inodes one by one (\`recently_deleted()\`), for up to ~5 minutes while their inode-table blocks are dirty, so this row depends on what was deleted on the disk just before."
if [ -n "$DIGEST_TABLE" ]; then
    echo
    echo "### Context hashing alone (benches/context_digest.sh, FILES=$FILES, RUNS=$RUNS)"
    sed -n '/^context hashing/,$p' <<<"$DIGEST_TABLE"
fi
if [ -s "$WORK/logs/buildah-failures" ]; then
    echo
    echo "### buildah failures"
    while read -r f; do
        echo; echo "**${f%%|*}** (last 20 lines):"; echo '```'; tail -20 "${f#*|}"; echo '```'
    done <"$WORK/logs/buildah-failures"
fi
echo
echo "benchmark time: ${BENCH_S} s builds + $((ELAPSED - BENCH_S)) s context_digest.sh"
