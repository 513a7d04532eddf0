#!/usr/bin/env bash
# The whole test suite, from a fresh machine. As root it first installs what the tests use
# (Debian packages) and creates the two test users; then formatting, clippy and `cargo test`.
# Its last lines count the tests that passed, failed, were ignored and skipped (with each skip's
# reason). A skip fails the run when CI is set (.ci/run sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # busybox-static makes the local base image; tar, gzip, zstd, getcap, python3, skopeo, umoci
    # and podman check what kiln writes with tools kiln did not write; uidmap gives
    # newuidmap/newgidmap, util-linux setpriv/unshare.
    apt-get install -y -qq --no-install-recommends tar gzip zstd libcap2-bin python3 skopeo \
      umoci podman busybox-static uidmap util-linux >/dev/null
  fi
  # Rootless paths are tested as ordinary users: kiln-test has subordinate id ranges (a full
  # newuidmap map), kiln-nosubid has none (the single-id fallback). The tests switch to them
  # with setpriv.
  id kiln-test >/dev/null 2>&1 || useradd -m -s /bin/sh kiln-test
  grep -q '^kiln-test:' /etc/subuid 2>/dev/null || echo 'kiln-test:200000:65536' >>/etc/subuid
  grep -q '^kiln-test:' /etc/subgid 2>/dev/null || echo 'kiln-test:200000:65536' >>/etc/subgid
  id kiln-nosubid >/dev/null 2>&1 ||
    useradd -m -s /bin/sh -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 kiln-nosubid
else
  echo "test.sh: not root, so no packages or test users were set up: the rootless tests skip" >&2
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

mkdir -p target
export KILN_SKIP_LOG="$PWD/target/test-skips.log"
out="$PWD/target/test-output.log"
: >"$KILN_SKIP_LOG"
status=0
cargo test --locked 2>&1 | tee "$out" || status=$?

# The summary: libtest's per-target counts added up, then every skip with its reason.
read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i; if ($(i + 1) ~ /^ignored/) g += $i
    } } END { print p + 0, f + 0, g + 0 }' "$out")
skips=$(sort -u "$KILN_SKIP_LOG" | grep -c . || true)
echo
echo "== kiln tests: $passed passed, $failed failed, $ignored ignored, $skips skipped"
grep -E '^test .* \.\.\. ignored' "$out" | sed 's/^test /   ignored: /' || true
if [ "$skips" -gt 0 ]; then
  sort -u "$KILN_SKIP_LOG" | sed 's/^SKIP /   skipped: /'
  if [ -n "${CI:-}" ]; then
    echo "== CI is set: a skipped test fails the run" >&2
    status=1
  fi
fi
exit "$status"
