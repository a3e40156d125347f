# Shared by images/build-base.sh and images/build-images.sh (sourced, not run).
# shellcheck shell=bash

cache="${ACCORDION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/accordion}"
images_cache="$cache/images"
#: buildah's own storage (layers, images), private to this project; overlay where the kernel
#: lets us mount it, vfs (full copies, slower) otherwise
storage_root="$images_cache/containers"
run_root="${XDG_RUNTIME_DIR:-/run}/accordion-buildah"

step() { printf '\033[1m[images]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[images]\033[0m %s\n' "$*" >&2; exit 1; }

storage_driver() {
  if [[ -n "${ACCORDION_STORAGE_DRIVER:-}" ]]; then echo "$ACCORDION_STORAGE_DRIVER"; return; fi
  local d; d=$(mktemp -d)
  mkdir -p "$d"/{l,u,w,m}
  if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
    umount "$d/m"; echo overlay
  else
    echo vfs
  fi
  rm -rf "$d"
}

bah() { # buildah on this project's storage
  buildah --root "$storage_root" --runroot "$run_root" --storage-driver "$STORAGE_DRIVER" "$@"
}

hash_of() { # hash_of FILE... : sha256 of the files' base names and contents, 16 hex digits
  # (not their paths: a clone elsewhere must find the same key)
  local f
  for f in "$@"; do printf '%s\0' "${f##*/}"; sha256sum <"$f"; done | sha256sum | cut -c1-16
}

need() {
  local missing=() b
  for b in "$@"; do command -v "$b" >/dev/null || missing+=("$b"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: apt-get install -y buildah mmdebstrap skopeo umoci (make images-deps)"
  [[ $(id -u) -eq 0 ]] || die "image builds need root here (mmdebstrap and buildah's chroot isolation)"
}
