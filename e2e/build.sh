#!/usr/bin/env bash
# Builds the local cluster's binaries from pinned Go modules (through the Go module proxy) into
# a cache keyed by those pins, so a warm machine skips the build. Prints the bin directory.
#
#   e2e/build.sh            build what is missing, print the bin dir on stdout
#   e2e/build.sh --check    exit 0 if everything is cached, 1 otherwise
#   e2e/build.sh [--check] registry   the same, plus the image registry (`make images` and the
#                           cluster's registry need it; `make test` does not build it)
#   e2e/build.sh --only registry      the registry alone (`make images`)
#   e2e/build.sh --only kueue         Kueue's manager and CRDs alone (built by default: cluster
#                           tests run it with `cluster up --kueue`)
#
# Pins live here and in e2e/kube/go.mod (Kubernetes, etcd); change them together.
set -euo pipefail

KWOK_VERSION=v0.8.0
HELM_VERSION=v4.3.1
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c  # github.com/minio/minio, commit 7aac2a2c5b7c
KUBE_VERSION=v1.36.3                                # must match e2e/kube/go.mod
REGISTRY_VERSION=v3.1.2                             # github.com/distribution/distribution/v3
KUEUE_VERSION=v0.17.0                               # sigs.k8s.io/kueue (its CRDs come from the same module)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ACCORDION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/accordion}"
export GOFLAGS="-buildvcs=false -trimpath"
export CGO_ENABLED=0

key() { # hash of everything that determines one binary
  { go env GOVERSION; printf '%s\n' "$@"; } | sha256sum | cut -c1-16
}
kube_key=$(key "$KUBE_VERSION" "$(cat "$here/kube/go.mod" "$here/kube/go.sum" "$here"/kube/*.go)")
kwok_key=$(key "$KWOK_VERSION" stages-v2)
helm_key=$(key "$HELM_VERSION")
minio_key=$(key "$MINIO_VERSION")
registry_key=$(key "$REGISTRY_VERSION")
kueue_key=$(key "$KUEUE_VERSION" config-v2)

bin="$cache/bin"
# Kueue is built by default: cluster tests run it (`cluster up --kueue`, issue 19's integration).
want=("kube:$kube_key" "kwok:$kwok_key" "helm:$helm_key" "minio:$minio_key" "kueue:$kueue_key")
check=""
for arg in "$@"; do
  case $arg in
    --check) check=1 ;;
    --only) want=() ;;
    registry) want+=("registry:$registry_key") ;;
    kueue) want+=("kueue:$kueue_key") ;;
    *) echo "usage: e2e/build.sh [--check] [--only] [registry] [kueue]" >&2; exit 2 ;;
  esac
done

missing=()
for w in "${want[@]}"; do
  name=${w%%:*} k=${w#*:}
  [[ -x "$cache/store/$name-$k/$name" ]] || missing+=("$name")
done
if [[ -n "$check" ]]; then
  [[ ${#missing[@]} -eq 0 ]]
  exit
fi

step() { printf '\033[1m[build]\033[0m %s\n' "$*" >&2; }
total=${#missing[@]} n=0
for name in "${missing[@]}"; do
  n=$((n + 1))
  start=$SECONDS
  case $name in
    kube)
      out="$cache/store/kube-$kube_key"
      step "($n/$total) etcd + kube-apiserver + scheduler + controller-manager + kubectl $KUBE_VERSION (the long one: ~4-20 min cold, by CPU)"
      ver="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") \
        -X k8s.io/component-base/version.gitTreeState=clean \
        -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
      ldflags="-s -w $ver ${ver//k8s.io\/component-base\/version/k8s.io/client-go/pkg/version}"
      (cd "$here/kube" && go build -ldflags "$ldflags" -o "$out.tmp/kube" .)
      ;;
    kwok)  out="$cache/store/kwok-$kwok_key";  step "($n/$total) kwok $KWOK_VERSION"
           GOBIN="$out.tmp" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
           # kwok's binary has no built-in lifecycle: take the stages kwokctl uses from the
           # same pinned module (node-fast, heartbeat with lease, pod-fast).
           src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
           mkdir -p "$out.tmp/stages"
           cp "$src"/kustomize/stage/node/fast/node-initialize.yaml \
              "$src"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
              "$src"/kustomize/stage/pod/fast/pod-*.yaml "$out.tmp/stages/"
           chmod -R u+w "$out.tmp/stages" ;;
    helm)  out="$cache/store/helm-$helm_key";  step "($n/$total) helm $HELM_VERSION"
           GOBIN="$out.tmp" go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" ;;
    minio) out="$cache/store/minio-$minio_key"; step "($n/$total) minio $MINIO_VERSION"
           GOBIN="$out.tmp" go install -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION" ;;
    registry) out="$cache/store/registry-$registry_key"; step "($n/$total) registry (distribution) $REGISTRY_VERSION"
           GOBIN="$out.tmp" go install -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" \
             "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION" ;;
    kueue) out="$cache/store/kueue-$kueue_key"; step "($n/$total) kueue $KUEUE_VERSION (its controller manager; ~5-12 min cold)"
           GOBIN="$out.tmp" go install -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
             "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
           # its CRDs and webhook manifests from the same module (the module cache), beside the
           # binary: `cluster up --kueue` registers them at start (accordion_dev/kueue.py)
           src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
           mkdir -p "$out.tmp/config/crds"
           cp "$src"/config/components/crd/bases/*.yaml "$out.tmp/config/crds/"
           cp "$src"/config/components/webhook/manifests.yaml "$out.tmp/config/webhooks.yaml"
           chmod -R u+w "$out.tmp/config" ;;
  esac
  rm -rf "$out" && mv "$out.tmp" "$out"  # publish atomically: a killed build leaves no half binary
  step "    done in $((SECONDS - start)) s"
done

# A stable bin dir of links into the store, rebuilt every time (cheap) so it follows the pins.
mkdir -p "$bin"
ln -sfn "$cache/store/kube-$kube_key/kube" "$bin/kube"
for tool in etcd kube-apiserver kube-scheduler kube-controller-manager kubectl; do
  ln -sfn kube "$bin/$tool"
done
ln -sfn "$cache/store/kwok-$kwok_key/kwok" "$bin/kwok"
ln -sfn "$cache/store/kwok-$kwok_key/stages" "$bin/kwok-stages"
ln -sfn "$cache/store/helm-$helm_key/helm" "$bin/helm"
ln -sfn "$cache/store/minio-$minio_key/minio" "$bin/minio"
if [[ -x "$cache/store/kueue-$kueue_key/kueue" ]]; then
  ln -sfn "$cache/store/kueue-$kueue_key/kueue" "$bin/kueue"
  ln -sfn "$cache/store/kueue-$kueue_key/config" "$bin/kueue-config"
fi
if [[ -x "$cache/store/registry-$registry_key/registry" ]]; then
  ln -sfn "$cache/store/registry-$registry_key/registry" "$bin/registry"
fi
echo "$bin"
