#!/usr/bin/env bash
# Builds kiln, makes a local busybox base image from Debian's busybox-static (no registry
# needed), and builds the two examples into a store under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v busybox >/dev/null 2>&1 && [ ! -x /bin/busybox ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  else
    echo "please install busybox-static (sudo apt-get install busybox-static)" >&2
    exit 1
  fi
fi

cargo build --release --quiet
kiln=$PWD/target/release/kiln
export KILN_ROOT=${KILN_ROOT:-$PWD/target/kiln-store}

scripts/make-busybox-rootfs.sh target/busybox-rootfs.tar >/dev/null
"$kiln" import target/busybox-rootfs.tar busybox:latest
"$kiln" build -t kiln-example/hello:dev examples/multistage
"$kiln" build -t kiln-example/site:dev -o type=oci,dest=target/site-oci.tar examples/static-site
"$kiln" images
"$kiln" run --rm kiln-example/hello:dev   # runs the image's CMD in kiln's sandbox
echo "store: $KILN_ROOT (an OCI image layout: try skopeo inspect oci:$KILN_ROOT:docker.io/kiln-example/hello:dev)"
