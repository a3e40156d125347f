#!/usr/bin/env bash
# The base image of both Dockerfiles, built here from Debian's packages because no registry can
# be reached (a stand-in for python:3.11.14-slim-bookworm): a Debian bookworm root filesystem
# made by mmdebstrap (variant minbase, like debian:bookworm-slim; docs and man pages left out,
# as in the slim images) with the packages of images/base-packages.txt, imported into buildah's
# storage as `localhost/accordion-base:<key>`. The key hashes the package list and this script,
# so the base is built once and again only when either changes. Prints the image name.
#
#   images/build-base.sh            build if missing, print the image name on stdout
#   images/build-base.sh --name     print the image name only
#
# What differs from python:3.11-slim: Debian's CPython 3.11 (/usr/bin/python3.11, 3.11.2 in
# bookworm) instead of one built into /usr/local; `python` and `pip` come from python-is-python3
# and python3-pip, and Debian's EXTERNALLY-MANAGED marker is removed so that `pip install` into
# the system Python works as it does in the official image (the Dockerfiles install uv that way).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=images/lib.sh
source "$here/lib.sh"

SUITE=bookworm
MIRROR=${ACCORDION_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${ACCORDION_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
#: fixed file times and image creation date: the same packages give the same tarball
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}  # 2024-01-01

key=$(hash_of "$here/base-packages.txt" "$here/build-base.sh")
name="localhost/accordion-base:$key"
if [[ "${1:-}" == "--name" ]]; then echo "$name"; exit 0; fi

need buildah mmdebstrap
STORAGE_DRIVER=$(storage_driver)
mkdir -p "$images_cache"
if bah inspect --type image "$name" >/dev/null 2>&1; then
  step "base $name: cached"
  echo "$name"
  exit 0
fi

mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/base-packages.txt")
start=$SECONDS
tar="$images_cache/base-$key.tar"
step "base: mmdebstrap $SUITE minbase + ${packages[*]} (once; 1-3 min)"
# the hooks' "$1" is the root mmdebstrap passes them, hence single quotes
# shellcheck disable=SC2016
mmdebstrap --variant=minbase --mode=root --format=tar \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
  --customize-hook='chroot "$1" dpkg-query -W -f "\${Package}=\${Version}\n" > "$1"/.accordion-base-packages' \
  --customize-hook='copy-out /.accordion-base-packages '"$images_cache" \
  --customize-hook='rm -f "$1"/.accordion-base-packages "$1"/etc/machine-id' \
  --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*; find "$1"/var/log -type f -delete' \
  "$SUITE" "$tar.tmp" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
  >&2
mv "$tar.tmp" "$tar"
mv "$images_cache/.accordion-base-packages" "$images_cache/base-$key.packages"
step "base: rootfs $(du -h "$tar" | cut -f1) in $((SECONDS - start)) s; importing"

ctr=$(bah from --name "accordion-base-$key-$$" scratch)
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
bah add "$ctr" "$tar" / >/dev/null
bah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd python3 \
  --label org.opencontainers.image.title=accordion-base \
  --label "org.opencontainers.image.description=Debian $SUITE + Python 3.11 (mmdebstrap), the base of Accordion's images" \
  --label "accordion.dev/base-key=$key" \
  --created-by "images/build-base.sh" \
  "$ctr"
bah commit --quiet --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$name" >/dev/null
rm -f "$tar"
step "base: $name ($(bah inspect --type image --format '{{.FromImageDigest}}' "$name" 2>/dev/null || true)) in $((SECONDS - start)) s"
echo "$name"
