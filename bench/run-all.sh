#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md in one go on this machine, each writing its figures
# as JSON into a results directory, then draws the pictures and rewrites BENCHMARKS.md
# (bench/report/render.py).
#
#   bench/run-all.sh                  # everything, about 15-20 minutes
#   bench/run-all.sh --quick          # short phases: checks the script itself, a few minutes
#   bench/run-all.sh --only ingest,auth --no-build
#
# Options:
#   --quick            short phases; renders into the results directory, never BENCHMARKS.md
#   --only NAMES       comma-separated stage names or prefixes (see --list)
#   --list             print the stages and exit
#   --no-build         use the binaries already in target/release
#   --results DIR      results directory (default target/bench-results/<UTC timestamp>/)
#   --no-render        do not run render.py at the end
#
# A full run (no --quick, no --only) renders into BENCHMARKS.md and docs/bench/; any other
# run renders into the results directory (render.py can always be run again by hand:
# `python3 bench/report/render.py DIR`). A stage that fails is reported loudly, the others
# still run, and the script exits 1 at the end naming the failed stages.
#
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), Redis on 6379, nats-server and
# redis-server on PATH, PostgreSQL server binaries (initdb, pg_ctl) for the chaos run, and
# python3 (matplotlib is installed with pip if missing).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0 build=1 render=1 only="" results="" list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --no-render) render=0 ;;
    --only) only="$2"; shift ;;
    --only=*) only="${1#--only=}" ;;
    --results) results="$2"; shift ;;
    --results=*) results="${1#--results=}" ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

pg_admin="postgres://postgres@127.0.0.1:5432/postgres"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bench="$target_dir/release/bench"

# Durations: full run, or --quick.
if [ "$quick" = 1 ]; then
  ingest_s=2; sweep_s=2; sweep_c="1 4 16"
  auth_args="--rounds 1 --duration 1 --warmup 0.5"
  config_args="--rounds 1 --duration 1 --warmup 0.5"
  flood_args="--rounds 1 --seconds 3 --settle 1"
  startup_runs=1; chaos_s=12
else
  ingest_s=10; sweep_s=8; sweep_c="1 2 4 8 16 32"
  auth_args="--rounds 2 --duration 5 --warmup 1"
  config_args="--rounds 2 --duration 5 --warmup 1"
  flood_args="--rounds 4 --seconds 10"
  startup_runs=5; chaos_s=40
fi

# The stages: name, estimated seconds, title. The command of each is run_stage_<kind>.
stages=()
add() { stages+=("$1|$2|$3"); }
add startup $((startup_runs * 2 * 3 + 5)) "start-up time and idle memory (SQLite, PostgreSQL)"
for b in 1 100 500; do
  for d in 0 50; do
    # ceilings before and after, JetStream, warm-up, peak, drain, 80% of peak, 80% of sustained
    add "ingest-b$b-d$d" $((7 * ingest_s + 20)) "ingest batch $b, $d% duplicates"
  done
done
n_sweep=$(wc -w <<<"$sweep_c")
add sweep $((n_sweep * (sweep_s + 5))) "ingest batch 100, concurrency sweep ($(tr ' ' ',' <<<"$sweep_c"))"
if [ "$quick" = 1 ]; then
  add auth 12 "auth proxy overhead (login+refresh, rejected verify)"
  add config 10 "GET /config with and without ETag"
  add flood 12 "flood isolation"
else
  add auth 100 "auth proxy overhead (login+refresh, rejected verify)"
  add config 75 "GET /config with and without ETag"
  add flood 100 "flood isolation"
fi
add chaos $((chaos_s + 35)) "chaos run (${chaos_s} s of faults under load)"

if [ "$list" = 1 ]; then
  for s in "${stages[@]}"; do IFS='|' read -r name est title <<<"$s"; printf '%-16s about %4s s  %s\n' "$name" "$est" "$title"; done
  exit 0
fi

selected() {
  [ -z "$only" ] && return 0
  local want
  for want in ${only//,/ }; do
    [ "$1" = "$want" ] || [[ "$1" == "$want"-* ]] && return 0
  done
  return 1
}

chosen=()
for s in "${stages[@]}"; do
  IFS='|' read -r name _ _ <<<"$s"
  selected "$name" && chosen+=("$s")
done
if [ ${#chosen[@]} = 0 ]; then
  echo "no stage matches --only '$only' (try --list)" >&2
  exit 2
fi

[ -n "$results" ] || results="target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results"
results=$(cd "$results" && pwd)
echo "results: $results"

# Machine description for the report (no secrets: versions and sizes only).
python3 - "$results/machine.json" "$quick" <<'EOF'
import json, os, platform, subprocess, sys
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return None
def first(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
mem = first("/proc/meminfo", "MemTotal")
info = {
    "cpus": os.cpu_count(),
    "cpu_model": first("/proc/cpuinfo", "model name"),
    "memory_gib": round(int(mem.split()[0]) / 1024 / 1024, 1) if mem else None,
    "kernel": platform.release(),
    "rustc": out("rustc", "--version"),
    "postgres": out("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc", "SHOW server_version"),
    "redis": out("redis-server", "--version"),
    "nats": out("nats-server", "--version"),
    "git_commit": out("git", "rev-parse", "--short", "HEAD"),
    "git_dirty": bool(out("git", "status", "--porcelain", "--untracked-files=no")),
    "quick": sys.argv[2] == "1",
    "loadavg_start": open("/proc/loadavg").read().split()[:3],
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF

# Wait quietly while someone else benchmarks on this machine (see /tmp/bench-quiet).
wait_quiet() {
  if [ -e /tmp/bench-quiet ]; then
    echo "  (waiting: /tmp/bench-quiet exists, someone else is benchmarking)"
    while [ -e /tmp/bench-quiet ]; do sleep 10; done
  fi
}

fmt_s() { local s=$1; if [ "$s" -ge 60 ]; then printf '%d min %02d s' $((s / 60)) $((s % 60)); else printf '%d s' "$s"; fi; }

if [ "$build" = 1 ]; then
  wait_quiet
  echo "building release binaries (bench, sidecar, chaos test) ..."
  t0=$SECONDS
  if ! cargo build --release -p bench -p sidecar >"$results/build.log" 2>&1 \
     || ! cargo test --release --test chaos --no-run >>"$results/build.log" 2>&1; then
    echo "BUILD FAILED; see $results/build.log" >&2
    tail -20 "$results/build.log" >&2
    exit 1
  fi
  echo "built in $(fmt_s $((SECONDS - t0)))"
fi
[ -x "$bench" ] || { echo "$bench missing (drop --no-build)" >&2; exit 1; }

# --- stage commands (stdout+stderr of each go to <results>/<name>.log) ----------------

stage_startup() {
  local db="bench_startup_$$"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $db" || return 1
  "$bench" startup --runs "$startup_runs" --binary "$target_dir/release/sidecar" \
    --postgres "postgres://postgres@127.0.0.1:5432/$db" --json "$results/startup.json"
  local rc=$?
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  return $rc
}

stage_ingest() { # batch duplicates% concurrency
  local dup
  dup=$(awk "BEGIN{print $2/100}")
  "$bench" ingest --batch "$1" --concurrency "$3" --duplicates "$dup" --seconds "$ingest_s" \
    --postgres "$pg_admin" --sidecar-binary "$target_dir/release/sidecar" \
    --json "$results/ingest-b$1-d$2.json"
}

stage_sweep() {
  local c rc=0
  for c in $sweep_c; do
    echo "=== concurrency $c"
    "$bench" ingest --batch 100 --concurrency "$c" --seconds "$sweep_s" --no-latency-phase \
      --no-ceilings --postgres "$pg_admin" --sidecar-binary "$target_dir/release/sidecar" \
      --json "$results/sweep-c$c.json" || rc=1
  done
  return $rc
}

stage_auth() {
  # shellcheck disable=SC2086
  "$bench" auth $auth_args --json "$results/auth.json"
}

stage_config() {
  # shellcheck disable=SC2086
  "$bench" config $config_args --json "$results/config.json"
}

stage_flood() {
  # shellcheck disable=SC2086
  "$bench" flood $flood_args --postgres "$pg_admin" --json "$results/flood.json"
}

stage_chaos() {
  CHAOS_SECONDS=$chaos_s CHAOS_TIMELINE_OUT="$results/chaos.json" \
    cargo test --release --test chaos -- --nocapture || return 1
  # The test skips itself (and passes) when a service is missing: no timeline then.
  [ -s "$results/chaos.json" ] || { echo "no chaos timeline written (skipped?)"; return 1; }
}

run_stage() {
  case "$1" in
    startup) stage_startup ;;
    ingest-b1-d*) stage_ingest 1 "${1##*-d}" 64 ;;
    ingest-b100-d*) stage_ingest 100 "${1##*-d}" 16 ;;
    ingest-b500-d*) stage_ingest 500 "${1##*-d}" 8 ;;
    sweep) stage_sweep ;;
    auth) stage_auth ;;
    config) stage_config ;;
    flood) stage_flood ;;
    chaos) stage_chaos ;;
    *) echo "no such stage: $1" >&2; return 2 ;;
  esac
}

# --- the run ---------------------------------------------------------------------------

total_est=0
for s in "${chosen[@]}"; do IFS='|' read -r _ est _ <<<"$s"; total_est=$((total_est + est)); done
echo "${#chosen[@]} stages, about $(fmt_s $total_est) in all"

failed=()
left=$total_est
i=0
started_all=$SECONDS
tty=0; [ -t 1 ] && tty=1
for s in "${chosen[@]}"; do
  IFS='|' read -r name est title <<<"$s"
  i=$((i + 1))
  wait_quiet
  head="[$i/${#chosen[@]}] $title (about $(fmt_s "$est"); $(fmt_s "$left") left in all)"
  log="$results/$name.log"
  t0=$SECONDS
  if [ "$tty" = 1 ]; then
    # A ticking elapsed time while the stage runs.
    ( while sleep 1; do printf '\r%s ... %s ' "$head" "$(fmt_s $((SECONDS - t0)))"; done ) &
    ticker=$!
  else
    printf '%s ...\n' "$head"
  fi
  run_stage "$name" >"$log" 2>&1
  rc=$?
  if [ "$tty" = 1 ]; then kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null; printf '\r%s ... ' "$head"; fi
  took=$((SECONDS - t0))
  if [ "$rc" = 0 ]; then
    echo "done in $(fmt_s $took)"
  else
    echo "FAILED (exit $rc) after $(fmt_s $took); log: $log"
    tail -n 8 "$log" | sed 's/^/    | /'
    failed+=("$name")
  fi
  left=$((left - est)); [ "$left" -lt 0 ] && left=0
done
python3 -c 'import json,sys; p=sys.argv[1]; m=json.load(open(p)); m["loadavg_end"]=open("/proc/loadavg").read().split()[:3]; json.dump(m, open(p,"w"), indent=2)' "$results/machine.json"
echo "all stages finished in $(fmt_s $((SECONDS - started_all)))"

if [ "$render" = 1 ]; then
  if [ "$quick" = 0 ] && [ -z "$only" ]; then
    render_args=()   # the real BENCHMARKS.md and docs/bench/
  else
    render_args=(--out-md "$results/BENCHMARKS.md" --img-dir "$results/img")
  fi
  if python3 bench/report/render.py "$results" "${render_args[@]}"; then
    :
  else
    echo "RENDER FAILED" >&2
    failed+=("render")
  fi
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stages: ${failed[*]} (logs in $results)" >&2
  exit 1
fi
echo "all good; results in $results"
