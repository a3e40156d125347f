#!/usr/bin/env bash
# Fresh-machine rehearsal: what a newcomer gets from `git clone` and the README's two commands,
# with every cache the project uses pointed at empty directories.
#
#   e2e/fresh_machine.sh            clone, then cold `make test`, then warm `make test`
#   e2e/fresh_machine.sh demo       clone, then cold `make demo` (and `make demo-down`)
#   e2e/fresh_machine.sh test demo  both, each in its own clone with its own empty caches
#
# Only committed work is rehearsed (the clone is of HEAD). Emptied: ACCORDION_CACHE (uv, the
# Go-built binaries, the Horovod wheel), uv's cache, Go's build and module caches, pip's cache,
# XDG_CACHE_HOME; PIP_FIND_LINKS is unset (a wheel folder some machines of this kind carry).
# Not emptied: Debian packages (`make deps-system` installs them system-wide, as root) and the Go
# toolchain and Python interpreter a fresh machine of this kind starts with.
#
# Each phase's time is printed as it ends; the result (date, commit, machine, phases, pass/fail)
# is written to benchmarks/results/fresh_machine-<target>.json of this checkout. Exit status 0
# only if every phase passed. Keeps the temporary folder on failure (its path is printed).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(test)
commit=$(git -C "$repo" rev-parse HEAD)
if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]]; then
  echo "[fresh] note: uncommitted changes in $repo are not rehearsed (the clone is of $commit)" >&2
fi

say() { printf '\033[1m[fresh]\033[0m %s\n' "$*" >&2; }

rehearse() { # $1: test | demo
  local target=$1 tmp phases=() ok=1 start rc log
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/accordion-fresh-$target.XXXXXX")
  log="$tmp/log"
  say "$target: rehearsing $commit in $tmp (full log: $log)"
  local caches="$tmp/caches"
  mkdir -p "$caches"
  phase() { # name, command...: run it in the clone with empty caches, time it, record it
    local name=$1; shift
    [[ $ok -eq 1 ]] || return 0
    say "$target: $name ..."
    start=$(date +%s.%N)
    (
      cd "$tmp/repo" 2>/dev/null || cd "$tmp"
      unset PIP_FIND_LINKS VIRTUAL_ENV
      export ACCORDION_CACHE="$caches/accordion" UV_CACHE_DIR="$caches/uv" \
        GOCACHE="$caches/go-build" GOMODCACHE="$caches/go-mod" PIP_CACHE_DIR="$caches/pip" \
        XDG_CACHE_HOME="$caches/xdg"
      "$@"
    ) >>"$log" 2>&1
    rc=$?
    local secs
    secs=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))")
    phases+=("$name $secs $rc")
    if [[ $rc -eq 0 ]]; then say "$target: $name ok in ${secs} s"
    else ok=0; say "$target: $name FAILED (exit $rc) after ${secs} s; last lines:"; tail -n 30 "$log" >&2; fi
  }
  phase clone git clone --quiet --no-local "$repo" "$tmp/repo"
  phase deps-system make deps-system
  phase deps-python make deps-python
  phase deps-bin make deps-bin
  if [[ $target == test ]]; then
    phase make-test-cold make test
    phase make-test-warm make test
  else
    phase make-demo-cold make demo
    phase make-demo-down make demo-down
  fi
  local summary
  summary=$(grep -aE '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -n 2 | tr '\n' '|')
  python3 - "$repo/benchmarks/results/fresh_machine-$target.json" "$target" "$commit" "$ok" \
    "$summary" "${phases[@]}" <<'EOF'
import json, os, sys, datetime
out, target, commit, ok, summary, *phases = sys.argv[1:]
rows = [dict(zip(("phase", "seconds", "exit"), p.split())) for p in phases]
for r in rows:
    r["seconds"], r["exit"] = float(r["seconds"]), int(r["exit"])
cold = [r for r in rows if r["phase"] not in ("make-test-warm", "make-demo-down")]
mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
result = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "commit": commit,
    "target": target,
    "machine": {"cpus": os.cpu_count(), "memory_gib": round(mem, 1)},
    "passed": ok == "1",
    "phases": rows,
    "cold_total_seconds": round(sum(r["seconds"] for r in cold), 1),
    "pytest_summaries": [s for s in summary.split("|") if s],
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(json.dumps(result, indent=2))
EOF
  if [[ $ok -eq 1 ]]; then
    say "$target: PASSED; removing $tmp"
    chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"
  else
    say "$target: FAILED; kept $tmp for inspection"
  fi
  [[ $ok -eq 1 ]]
}

status=0
for t in "${targets[@]}"; do
  case $t in
    test|demo) rehearse "$t" || status=1 ;;
    *) echo "usage: $0 [test] [demo]" >&2; exit 2 ;;
  esac
done
exit $status
