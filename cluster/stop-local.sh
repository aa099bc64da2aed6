#!/usr/bin/env bash
# Stop a local Ray cluster started by cluster/start-local.sh, and only that cluster.
#
# `ray stop` is not used by default: it kills every Ray process of this user on the
# machine, including other clusters and test runs. Instead this finds the processes whose
# command line names this cluster's temp dir (GCS, raylets, dashboard, monitors) and stops
# them together with their descendants (agents, workers, job drivers) by process id:
# SIGTERM, a grace period, then SIGKILL. `--all` runs `ray stop --force` instead.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: cluster/stop-local.sh [--port P | --temp-dir DIR] [--grace S] [--all]

Stop the local Ray cluster that cluster/start-local.sh started with the same --port
(or --temp-dir), head and worker nodes, and every process they started.

options:
  --port P        GCS port the cluster was started with (default 6379): its temp dir is
                  /tmp/ray-imagen-<port>
  --temp-dir DIR  the --temp-dir the cluster was started with (overrides --port)
  --grace S       seconds between SIGTERM and SIGKILL (default 10)
  --all           run `ray stop --force`: stops EVERY Ray process of this user here
  -h, --help      show this help

No Ray auth token is needed: the processes are stopped by id, not through the cluster.
USAGE
}

port=6379 temp_dir="" grace=10 all=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --temp-dir) temp_dir="$2"; shift 2 ;;
    --grace) grace="$2"; shift 2 ;;
    --all) all=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "stop-local.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $all == 1 ]]; then
  exec ray stop --force
fi
if ! [[ "$grace" =~ ^[0-9]+$ ]]; then
  echo "stop-local.sh: --grace must be a whole number of seconds, got '$grace'" >&2; exit 2
fi
temp_dir="${temp_dir:-/tmp/ray-imagen-$port}"
if [[ ! -d "$temp_dir" ]]; then
  echo "stop-local.sh: no cluster temp dir '$temp_dir' (wrong --port or --temp-dir?)" >&2
  exit 2
fi
temp_dir="$(cd "$temp_dir" && pwd)"

# The cluster's root processes: their arguments name <temp dir>[/node-N]/session_... (head
# and worker nodes: GCS, raylets, monitors) or --temp-dir=<temp dir> (the dashboard).
session_re="$(printf '%s' "$temp_dir" | sed 's/[][\.*^$]/\\&/g')(/node-[0-9]+)?/session_"
roots=()
while read -r pid args; do
  if [[ "$args" =~ $session_re || "$args" == *"--temp-dir=$temp_dir "* ]]; then
    [[ "$pid" != "$$" ]] && roots+=("$pid")
  fi
done < <(ps -eww -o pid=,args=)

# Add every descendant (agents, workers, job drivers), breadth-first over parent links.
declare -A children=()
while read -r pid ppid; do
  children[$ppid]+="$pid "
done < <(ps -e -o pid=,ppid=)
declare -A seen=()
queue=("${roots[@]}")
pids=()
while [[ ${#queue[@]} -gt 0 ]]; do
  p="${queue[0]}"; queue=("${queue[@]:1}")
  [[ -n "${seen[$p]:-}" ]] && continue
  seen[$p]=1; pids+=("$p")
  for c in ${children[$p]:-}; do queue+=("$c"); done
done

if [[ ${#pids[@]} -eq 0 ]]; then
  echo "no Ray processes of the cluster in $temp_dir are running"
  exit 0
fi
running() {  # the given pids that still run (exited-but-unreaped zombies do not count)
  local pid st
  alive=()
  while read -r pid st; do
    [[ -n "$pid" && "$st" != Z* ]] && alive+=("$pid")
  done < <(ps -o pid=,stat= -p "$(IFS=,; echo "$*")" 2>/dev/null || true)
  return 0
}

echo "stopping ${#pids[@]} processes of the Ray cluster in $temp_dir"
kill -TERM "${pids[@]}" 2>/dev/null || true
for ((i = 0; i < grace * 4; i++)); do
  running "${pids[@]}"
  [[ ${#alive[@]} -eq 0 ]] && { echo "stopped"; exit 0; }
  sleep 0.25
done
echo "killing ${#alive[@]} processes still running after ${grace}s: $(ps -o pid=,comm= -p "$(IFS=,; echo "${alive[*]}")" | tr "\n" " ")"
kill -KILL "${alive[@]}" 2>/dev/null || true
for ((i = 0; i < 20; i++)); do
  running "${alive[@]}"
  [[ ${#alive[@]} -eq 0 ]] && { echo "stopped"; exit 0; }
  sleep 0.25
done
echo "stop-local.sh: processes ${alive[*]} did not exit" >&2
exit 1
