#!/usr/bin/env bash
# `make images`: the operator and trainer images, built with buildah from Dockerfile.operator and
# Dockerfile.trainer as they are (the base image is the only build argument that changes: it is
# images/build-base.sh's Debian base), then pushed to the local registry
# (`$ACCORDION_CACHE/images/registry`, which `accordion-dev cluster up` serves to its process
# nodes). Prints the content-digest references at the end and writes them to
# .accordion/images.json.
#
#   images/build-images.sh [--no-push] [operator] [trainer] [trainer-cuda]
#                                              (default: operator trainer; --no-push: build only)
#   images/build-images.sh --check               exit 0 if every image is built and pushed
#
# An image is rebuilt only when its inputs change: the key hashes the Dockerfile, the build
# arguments, the base image's ID and every file the Dockerfile copies (the .dockerignore'd
# context). A warm run with nothing changed checks the keys, finds the tags in the registry's
# storage, and takes a few seconds. Set ACCORDION_IMAGES_REBUILD=1 to build again regardless.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=images/lib.sh
source "$here/lib.sh"

names=() no_push="" check=""
for arg in "$@"; do
  case $arg in
    --no-push) no_push=1 ;;  # build only (no registry needed)
    --check) check=1 ;;      # exit 0 if nothing needs building or pushing (CI: cache warm?)
    *) names+=("$arg") ;;
  esac
done
((${#names[@]})) || names=(operator trainer)
need buildah skopeo
STORAGE_DRIVER=$(storage_driver)
export STORAGE_DRIVER
total_start=$SECONDS
registry_root="$images_cache/registry"
mkdir -p "$registry_root" "$repo/.accordion"

if [[ -n "$check" ]]; then
  base=$("$here/build-base.sh" --name)
  bah inspect --type image "$base" >/dev/null 2>&1 || exit 1
else
  base=$(nice -n 10 "$here/build-base.sh")
fi
base_id=$(bah inspect --type image --format '{{.FromImageID}}' "$base")

# --- build-time trust ------------------------------------------------------------------------
# RUN steps download from PyPI and Debian. Where this machine reaches them through a
# TLS-intercepting proxy, its CA bundle is bind-mounted into the RUN steps (never into a layer),
# with a pip and a uv configuration that use it: the images themselves carry Debian's CA bundle.
trust_dir="$images_cache/build-trust"
mkdir -p "$trust_dir"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$trust_dir/pip.conf"
printf 'native-tls = true\n' >"$trust_dir/uv.toml"
trust=(
  --volume "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"
  --volume "$trust_dir/pip.conf:/etc/pip.conf:ro"
  --volume "$trust_dir/uv.toml:/etc/uv/uv.toml:ro"
)

# --- one image ----------------------------------------------------------------------------------
context_files() { # the files the build context holds (.dockerignore applied), one per line
  local dir
  printf '%s\n' pyproject.toml uv.lock
  for dir in "$@"; do
    (cd "$repo" && git ls-files -co --exclude-standard -- "$dir" | grep -v -e '__pycache__' -e '\.pyc$')
  done | LC_ALL=C sort
}

results=$(mktemp)
build_one() {
  local name=$1 dockerfile args=() srcs=() image repo_path
  case $name in
    operator)     dockerfile=Dockerfile.operator; args=(--build-arg "PYTHON_IMAGE=$base")
                  srcs=(operator/accordion_operator) ;;
    trainer)      dockerfile=Dockerfile.trainer;  args=(--build-arg "BASE_IMAGE=$base")
                  srcs=(trainer/accordion_trainer) ;;
    trainer-cuda) dockerfile=Dockerfile.trainer
                  args=(--build-arg "BASE_IMAGE=$base" --build-arg VARIANT=cuda)
                  srcs=(trainer/accordion_trainer) ;;
    *) die "unknown image $name (operator, trainer, trainer-cuda)" ;;
  esac
  repo_path="accordion/accordion-$name"
  local key
  key=$(
    cd "$repo"
    { printf '%s\n' "$dockerfile" "${args[@]}" "$base_id" "$STORAGE_DRIVER"
      cat "$dockerfile" .dockerignore
      context_files "${srcs[@]}" | while read -r f; do printf '%s\0' "$f"; sha256sum <"$f"; done
    } | sha256sum | cut -c1-16
  )
  image="localhost/accordion-$name:$key"
  local start=$SECONDS
  if [[ -n "$check" ]]; then
    bah inspect --type image "$image" >/dev/null 2>&1 && tag_digest "$repo_path" "$key" >/dev/null
    return
  fi
  if [[ -z "${ACCORDION_IMAGES_REBUILD:-}" ]] && bah inspect --type image "$image" >/dev/null 2>&1; then
    step "$name: $image cached (inputs unchanged)"
  else
    step "$name: building $dockerfile (key $key)"
    (cd "$repo" && nice -n 10 buildah --root "$storage_root" --runroot "$run_root" \
        --storage-driver "$STORAGE_DRIVER" bud \
        --isolation chroot --pull=never --layers --format docker \
        --timestamp "${SOURCE_DATE_EPOCH:-1704067200}" \
        "${trust[@]}" "${args[@]}" \
        -f "$dockerfile" -t "$image" .) 2>&1 | sed -u "s/^/  [$name] /" >&2
    step "$name: built in $((SECONDS - start)) s"
    # earlier builds of this image go (the layer cache of this one stays)
    bah images --format '{{.Name}}:{{.Tag}}' | grep -F "localhost/accordion-$name:" |
      grep -vF ":$key" | xargs -r buildah --root "$storage_root" --runroot "$run_root" \
        --storage-driver "$STORAGE_DRIVER" rmi >/dev/null 2>&1 || true
  fi
  local ref size
  if [[ -n "$no_push" ]]; then
    step "$name: $image ($(bah images --format '{{.Size}}' "$image") unpacked), not pushed"
    return
  fi
  push "$name" "$image" "$repo_path" "$key"
  printf '%s\t%s\t%s\t%s\n' "$name" "$ref" "$size" "$((SECONDS - start))" >>"$results"
}

# --- the registry ---------------------------------------------------------------------------
registry_pid=""
registry_addr=""
stop_registry() { [[ -z "$registry_pid" ]] || kill "$registry_pid" 2>/dev/null || true; }
trap stop_registry EXIT
start_registry() { # a private instance on the shared storage, for as long as this script runs
  [[ -z "$registry_addr" ]] || return 0
  local bins port
  bins=$("$repo/e2e/build.sh" --only registry)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  registry_addr="127.0.0.1:$port"
  PYTHONPATH="$repo/e2e" python3 -m accordion_dev.registry config "$registry_root" "$registry_addr" \
    >"$images_cache/registry-push.yml"
  "$bins/registry" serve "$images_cache/registry-push.yml" >"$images_cache/registry-push.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "the registry did not start; see $images_cache/registry-push.log"
}

tag_digest() { # the digest a tag points at, read from the registry's storage (no server needed)
  local link="$registry_root/docker/registry/v2/repositories/$1/_manifests/tags/$2/current/link"
  [[ -f "$link" ]] && cat "$link"
}

push() {
  local name=$1 image=$2 repo_path=$3 key=$4 digest
  if ! digest=$(tag_digest "$repo_path" "$key") || [[ -n "${ACCORDION_IMAGES_REBUILD:-}" ]]; then
    start_registry
    step "$name: pushing to the local registry"
    bah push --quiet --tls-verify=false --digestfile "$images_cache/$name.digest" \
      "$image" "docker://$registry_addr/$repo_path:$key"
    digest=$(tag_digest "$repo_path" "$key") || die "push of $name left no tag $key"
    # `latest` for people; tests and the chart use the digest
    skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
      "docker://$registry_addr/$repo_path@$digest" "docker://$registry_addr/$repo_path:latest"
  fi
  ref="$repo_path:$key@$digest"
  size=$(python3 - "$registry_root" "$repo_path" "$digest" <<'PY'
import json, pathlib, sys
root, repo, digest = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
blob = lambda d: root / "docker/registry/v2/blobs/sha256" / d[7:9] / d[7:] / "data"
m = json.loads(blob(digest).read_text())
print(sum(l["size"] for l in m["layers"]), len(m["layers"]))
PY
)
}

if [[ -z "$no_push" && -z "$check" ]]; then
  # The base too: the smallest image, which the process-node tests run (images/tests/).
  start=$SECONDS
  push base "$base" accordion/accordion-base "${base##*:}"
  printf '%s\t%s\t%s\t%s\n' base "$ref" "$size" "$((SECONDS - start))" >>"$results"
fi
if [[ -n "$check" ]]; then
  for name in "${names[@]}"; do build_one "$name" || exit 1; done
  exit 0
fi
for name in "${names[@]}"; do build_one "$name"; done

if [[ -n "$no_push" ]]; then exit 0; fi

# --- summary --------------------------------------------------------------------------------
python3 - "$results" "$repo/.accordion/images.json" "$base" "$STORAGE_DRIVER" \
  "$((SECONDS - total_start))" <<'PY'
import json, sys
results, out, base, driver, took = sys.argv[1:]
try:
    images = json.load(open(out))["images"]
except (OSError, ValueError, KeyError):
    images = {}
print(f"\n{'image':<14} {'compressed':>11} {'layers':>6}  built/pushed  reference")
for line in open(results):
    name, ref, size, secs = line.rstrip("\n").split("\t")
    repo_tag, digest = ref.split("@")
    repo, tag = repo_tag.rsplit(":", 1)
    compressed, layers = (int(x) for x in size.split())
    images[name] = {"repository": repo, "tag": tag, "digest": digest,
                    "compressedBytes": compressed,
                    "layers": layers, "seconds": int(secs)}
    print(f"{name:<14} {compressed / 2**20:7.0f} MiB {layers:>6}  {secs:>10} s  {repo}@{digest}")
json.dump({"base": base, "storageDriver": driver, "images": images}, open(out, "w"), indent=1)
print(f"\nmake images: {took} s. Digests in {out}; the local cluster's registry serves them")
print("(`accordion-dev cluster status` names its address: <address>/<repository>@<digest>).")
PY
rm -f "$results"
