# shellcheck shell=bash
# What the bench scripts share; sourced by them (`. "$(dirname "$0")/lib.sh"`), never run.
# Sourcing only sets the common settings (each overridable from the environment, as before) and
# defines functions: every script calls the setup steps itself, in its own order.
#
# Settings: BUILDAH (1; 0 skips buildah), BENCH_USER (kiln-test), BUILDAH_ISOLATION (chroot),
# SHARED_BENCH (../shared/bench next to the repo); REPO and BASE_NAME are fixed. TIME_DIGITS (2)
# is the decimals of `timed` and of a `summ` median under 1 s: a script sets it after sourcing.

BUILDAH=${BUILDAH:-1}
BENCH_USER=${BENCH_USER:-kiln-test}
BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
# the base both builders get, from the same rootfs tarball (kiln: imported; buildah: committed)
BASE_NAME=127.0.0.1:5000/busybox:latest
TIME_DIGITS=2
BENCH_NAME=$(basename "$0" .sh)

log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "$BENCH_NAME: $*" >&2; exit 1; }

# --- the user that runs the builders -----------------------------------------------------------
# bench_user: defines as_user CMD...: as root, CMD runs as $BENCH_USER through `runuser` with a
# clean environment; otherwise as the caller (BENCH_USER becomes the caller). Either way HOME and
# XDG_RUNTIME_DIR point into $WORK.
bench_user() {
    if [ "$(id -u)" = 0 ]; then
        getent passwd "$BENCH_USER" >/dev/null || die "user $BENCH_USER does not exist"
        as_user() {
            runuser -u "$BENCH_USER" -- env -i HOME="$WORK/home" USER="$BENCH_USER" LOGNAME="$BENCH_USER" \
                XDG_RUNTIME_DIR="$WORK/xdg" LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
        }
    else
        BENCH_USER=$(id -un)
        log "not root: running both builders as $BENCH_USER"
        as_user() { HOME="$WORK/home" XDG_RUNTIME_DIR="$WORK/xdg" "$@"; }
    fi
}

# --- work dir and cleanup ----------------------------------------------------------------------
# work_dir PREFIX: WORK (default: a new /var/tmp/PREFIX.XXXXXX), removed at exit unless KEEP is set.
# A script that made buildah stores defines buildah_cleanup (run first at exit).
work_dir() {
    WORK=${WORK:-$(mktemp -d "/var/tmp/$1.XXXXXX")}
    mkdir -p "$WORK"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    local rc=$?
    if declare -F buildah_cleanup >/dev/null; then buildah_cleanup; fi
    if [ -n "${KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}

# --- kiln binary -------------------------------------------------------------------------------
# kiln_binary: $KILN, or `cargo build --release` (honouring CARGO_TARGET_DIR); copied to $K in the
# work dir. KILN_GIVEN is the binary given, for the report. Also makes the work dir's bin, logs, md,
# xdg and home.
kiln_binary() {
    KILN_GIVEN=${KILN:-}
    if [ -z "${KILN:-}" ]; then
        log "cargo build --release (target dir: ${CARGO_TARGET_DIR:-$REPO/target})"
        (cd "$REPO" && cargo build --release --quiet --bin kiln) >&2
        KILN=${CARGO_TARGET_DIR:-$REPO/target}/release/kiln
    fi
    [ -x "$KILN" ] || die "kiln binary not found: $KILN"
    # HOME and XDG_RUNTIME_DIR of the builders: buildah's blob-info cache, CNI lock, pause process
    # and locks stay in the work dir instead of the user's home, /run or /var/tmp
    mkdir -p "$WORK/bin" "$WORK/logs" "$WORK/md" "$WORK/xdg" "$WORK/home"
    chmod 0700 "$WORK/xdg"
    cp "$KILN" "$WORK/bin/kiln"
    K=$WORK/bin/kiln
}

# --- inputs ------------------------------------------------------------------------------------
# copy_cases: every case of $SHARED_BENCH/cases and make-cases.sh into $WORK/bench (nothing in
# SHARED_BENCH is modified)
copy_cases() {
    mkdir -p "$WORK/bench/cases"
    cp "$SHARED_BENCH/make-cases.sh" "$WORK/bench/"
    cp -a "$SHARED_BENCH/cases/." "$WORK/bench/cases/"
    chmod -R u+w "$WORK/bench"
}
# make_cases: runs the copy's make-cases.sh (copy-tree's big directories); prints its content digest
make_cases() {
    local out
    out=$("$WORK/bench/make-cases.sh" 2>&1) || { echo "$out" >&2; die "make-cases.sh failed"; }
    sed -n 's/^content digest[^:]*: //p' <<<"$out"
}
# busybox_base: the base rootfs tarball both builders start from, $WORK/bb.tar; then the work dir
# is handed to the bench user
busybox_base() {
    log "busybox base rootfs (scripts/make-busybox-rootfs.sh)"
    "$REPO/scripts/make-busybox-rootfs.sh" "$WORK/bb.tar" >/dev/null
    if [ "$(id -u)" = 0 ]; then chown -R "$BENCH_USER:" "$WORK"; fi
}
# gen_files N DIR: N files under DIR, 100 per directory (dNNNN/fNNNNN.txt, every 50th .log),
# 64 B – 4 KiB of text each; the same tree every time (srand(42))
gen_files() {
    awk -v files="$1" -v ctx="$2" 'BEGIN {
        srand(42)
        line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
        for (i = 0; i < files; i++) {
            d = sprintf("%s/d%04d", ctx, int(i / 100))
            if (i % 100 == 0) system("mkdir -p " d)
            ext = (i % 50 == 0) ? "log" : "txt"
            f = sprintf("%s/f%05d.%s", d, i, ext)
            n = 1 + int(rand() * 64)
            for (j = 0; j < n; j++) print i, line > f
            close(f)
        }
    }'
}

# --- buildah -----------------------------------------------------------------------------------
# buildah_usable: BUILDAH_VERSION, or BUILDAH_SKIP (why not) and status 1
buildah_usable() {
    [ "$BUILDAH" = 0 ] && { BUILDAH_SKIP="BUILDAH=0"; return 1; }
    command -v buildah >/dev/null || { BUILDAH_SKIP="buildah is not installed"; return 1; }
    BUILDAH_VERSION=$(buildah --version | awk '{print $3}')
}
# buildah_commit_base DIR ERRLOG BUILDAH...: commits $WORK/bb.tar as $BASE_NAME (CMD sh) into a
# store, running buildah as BUILDAH... (a function that adds the store flags); DIR (the store's
# parent) is made and given to the bench user. On failure prints why and returns 1.
buildah_commit_base() {
    local dir=$1 errlog=$2 ctr err
    shift 2
    mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown "$BENCH_USER:" "$dir"
    if ! ctr=$("$@" from -q scratch 2>"$errlog") || ! err=$("$@" add "$ctr" "$WORK/bb.tar" / 2>&1) ||
        ! err=$("$@" config --cmd '["sh"]' "$ctr" 2>&1) ||
        ! err=$("$@" commit -q --rm "$ctr" "$BASE_NAME" 2>&1); then
        echo "rootless buildah cannot import the base: ${err:-$(tail -3 "$errlog" | tr '\n' ' ')}"
        return 1
    fi
}

# --- timing ------------------------------------------------------------------------------------
# timed CMD... : runs CMD as the bench user, stdout+stderr to $LOG; prints seconds or FAIL
timed() {
    sync
    local t0=$EPOCHREALTIME rc=0
    as_user "$@" >"$LOG" 2>&1 || rc=$?
    local t1=$EPOCHREALTIME
    if [ $rc -ne 0 ]; then echo FAIL; return; fi
    awk -v a="$t0" -v b="$t1" -v f="%.${TIME_DIGITS}f" 'BEGIN { printf f, b - a }'
}
# median of "t1 t2 ...", for ratios
med() {
    tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ v[NR] = $1 }
        END { if (NR == 0) exit; printf "%.4f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# summ "t1 t2 ..." -> "median (min–max)" ("FAIL" if any run failed); 2 decimals, TIME_DIGITS
# when the median is under 1 s
summ() {
    local xs=$1
    [[ " $xs " == *" FAIL "* ]] && { echo "FAIL"; return; }
    [ -z "${xs// /}" ] && { echo "–"; return; }
    tr ' ' '\n' <<<"$xs" | grep . | sort -n | awk -v small="%.${TIME_DIGITS}f" '
        { v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              f = (m < 1) ? small : "%.2f"
              if (NR == 1) printf f, m; else printf f " (" f "–" f ")", m, v[1], v[NR] }'
}
# best_time PIPELINE: the best wall time of $RUNS runs of a shell pipeline, in seconds
best_time() {
    local best="" t start end i
    for ((i = 0; i < RUNS; i++)); do
        start=$(date +%s.%N)
        bash -o pipefail -c "$1" >/dev/null
        end=$(date +%s.%N)
        t=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
        if [[ -z "$best" ]] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then
            best=$t
        fi
    done
    echo "$best"
}
