#!/usr/bin/env bash
# Builds the relay's container image with buildah from a statically linked relay binary; pulls
# nothing (FROM scratch).
#
#   deploy/container/build.sh BINARY [IMAGE]     IMAGE defaults to localhost/pwrelay:latest
#
# BINARY must be static (RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
# --target x86_64-unknown-linux-gnu -p pwrelay-relay); the build refuses a dynamically linked one.
# Needs buildah (Debian package buildah) and ca-certificates; run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:?usage: $0 BINARY [IMAGE]}
image=${2:-localhost/pwrelay:latest}
bundle=/etc/ssl/certs/ca-certificates.crt
uid=65532

[ -x "$binary" ] || { echo "$binary is not an executable file" >&2; exit 66; }
if file "$binary" 2>/dev/null | grep -q 'dynamically linked' || readelf -l "$binary" 2>/dev/null | grep -q 'INTERP'; then
  echo "$binary is dynamically linked; a FROM scratch image needs a static build (see the header of $0)" >&2
  exit 65
fi
[ -r "$bundle" ] || { echo "$bundle is missing; install the Debian package ca-certificates" >&2; exit 66; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
install -d -m 0755 "$root/etc/ssl/certs" "$root/etc/pwrelay"
install -d -m 1777 "$root/tmp"
install -d -m 0700 -o "$uid" -g "$uid" "$root/var/lib/pwrelay"
install -m 0755 "$binary" "$root/pwrelay"
install -m 0644 "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\npwrelay:x:%s:%s:pwrelay relay:/var/lib/pwrelay:/sbin/nologin\n' "$uid" "$uid" > "$root/etc/passwd"
printf 'root:x:0:\npwrelay:x:%s:\n' "$uid" > "$root/etc/group"
# Name resolution of the static binary: files, then DNS (the runtime provides hosts and resolv.conf).
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
tar -C "$root" --numeric-owner -cf "$context/rootfs.tar" .
cp "$here/Containerfile" "$context/Containerfile"

buildah build --quiet --pull=never --layers=false -f "$context/Containerfile" -t "$image" "$context" >/dev/null
echo "built $image from $binary"
