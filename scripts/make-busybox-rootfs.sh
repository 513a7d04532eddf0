#!/usr/bin/env bash
# Makes a busybox root filesystem tarball from Debian's busybox-static, for use as a local base
# image (no registry needed):
#
#   scripts/make-busybox-rootfs.sh busybox.tar && kiln import busybox.tar busybox:latest
#
# The tarball is reproducible: sorted entries, numeric owners 0:0, mtimes fixed.
set -euo pipefail

out=${1:?usage: $0 OUT.tar}
bb=${BUSYBOX:-}
if [ -z "$bb" ]; then
  for c in /bin/busybox /usr/bin/busybox "$(command -v busybox 2>/dev/null || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { bb=$c; break; }
  done
fi
if [ -z "$bb" ]; then
  echo "busybox not found: install Debian's busybox-static (apt-get install busybox-static)" >&2
  exit 1
fi
if command -v readelf >/dev/null 2>&1 && readelf -d "$bb" 2>/dev/null | grep -q NEEDED; then
  echo "$bb is dynamically linked: install Debian's busybox-static" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,var/tmp,proc,sys,dev,run}
cp "$bb" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
"$bb" --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done

# busybox has no adduser in Debian's build: users are plain passwd/group lines.
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
daemon:x:1:
bin:x:2:
users:x:100:
nogroup:x:65534:
nobody:x:65534:
GROUP
echo "busybox" > "$root/etc/hostname"
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"

tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$out" .
echo "$out"
