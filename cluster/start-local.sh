#!/usr/bin/env bash
# Start a local multi-process Ray cluster on the loopback interface: one head node and,
# optionally, extra worker nodes (each its own raylet, as on separate machines).
# Jobs then go to it with `ray job submit`; stop it with cluster/stop-local.sh.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: cluster/start-local.sh [options]

Start a Ray head node on 127.0.0.1 (plus --workers extra worker nodes) for
`ray job submit --address http://127.0.0.1:<dashboard port>`, and for drivers
such as `imagen-ray train/generate` run with RAY_ADDRESS=127.0.0.1:<port>.

options:
  --workers N           extra worker nodes joining the head (default 0)
  --head-cpus N         logical CPUs of the head node (default: the machine's cores)
  --worker-cpus N       logical CPUs of each worker node (default 1)
  --gpus N              GPUs of the head node (default: detected)
  --port P              GCS port of the head (default 6379)
  --dashboard-port P    dashboard and job API port (default 8265)
  --client-port P       Ray Client port (default 10001)
  --agent-port P        first of the per-node dashboard agent ports; node i uses P+i
                        (default 52365)
  --temp-dir DIR        session and log directory, at most 36 characters (default
                        /tmp/ray-imagen-<port>; worker node i uses DIR/node-i);
                        stop-local.sh finds this cluster's processes by it
  --token-file FILE     Ray auth token of the cluster (default: $RAY_AUTH_TOKEN_PATH,
                        else ~/.ray/auth_token); made (mode 0600) if missing
  -h, --help            show this help

Token authentication is always on: the head and every worker node start with
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<token file>, so every node, job driver
and worker of the cluster holds the same token. A client needs both variables (or
RAY_AUTH_TOKEN=<the token>); without them `ray job submit` is refused.

example:
  cluster/start-local.sh --workers 1 --head-cpus 2 --worker-cpus 2
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=~/.ray/auth_token
  ray job submit --address http://127.0.0.1:8265 \
      --runtime-env cluster/runtime_env.yaml --working-dir . -- \
      python -m imagen_ray.train --config configs/tiny/base.yaml --data memory
  cluster/stop-local.sh
USAGE
}

workers=0 head_cpus="" worker_cpus=1 gpus="" port=6379 dashboard_port=8265
client_port=10001 agent_port=52365 temp_dir="" token_file="${RAY_AUTH_TOKEN_PATH:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --head-cpus) head_cpus="$2"; shift 2 ;;
    --worker-cpus) worker_cpus="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dashboard-port) dashboard_port="$2"; shift 2 ;;
    --client-port) client_port="$2"; shift 2 ;;
    --agent-port) agent_port="$2"; shift 2 ;;
    --temp-dir) temp_dir="$2"; shift 2 ;;
    --token-file) token_file="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start-local.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in workers worker_cpus port dashboard_port client_port agent_port; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]]; then
    echo "start-local.sh: --${v//_/-} must be a whole number, got '${!v}'" >&2; exit 2
  fi
done
temp_dir="${temp_dir:-/tmp/ray-imagen-$port}"
# Token auth, explicitly, on every node: left to Ray, `ray start --head` turns it on only
# when ~/.ray/auth_token exists, and worker nodes decide for themselves.
if [[ -n "${RAY_AUTH_MODE:-}" && "${RAY_AUTH_MODE}" != token ]]; then
  echo "start-local.sh: RAY_AUTH_MODE='$RAY_AUTH_MODE', but this cluster always uses token" \
       "auth; unset RAY_AUTH_MODE" >&2
  exit 2
fi
token_file="${token_file:-$HOME/.ray/auth_token}"
# Ray's Unix sockets live under <temp dir>[/node-N]/session_<date>_<pid>/sockets/; their
# paths must stay under 108 bytes.
if [[ ${#temp_dir} -gt 36 ]]; then
  echo "start-local.sh: --temp-dir '$temp_dir' is too long for Ray's socket paths; use" \
       "a path of at most 36 characters (e.g. /tmp/ray-imagen)" >&2
  exit 2
fi
command -v ray >/dev/null || {
  echo "start-local.sh: 'ray' is not on PATH; activate the venv (. .venv/bin/activate)" >&2
  exit 2
}
if [[ ! -s "$token_file" ]]; then
  mkdir -p "$(dirname "$token_file")"
  # 256 random bits, as `ray get-auth-token --generate` makes them
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$token_file")
  echo "wrote a new Ray auth token to $token_file"
fi
token_file="$(cd "$(dirname "$token_file")" && pwd)/$(basename "$token_file")"
# Every `ray start` below (and so every process of every node) gets the same token; one
# in RAY_AUTH_TOKEN would take precedence over the file, so it is not passed on.
unset RAY_AUTH_TOKEN
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
mkdir -p "$temp_dir"
temp_dir="$(cd "$temp_dir" && pwd)"

head_args=(--head --node-ip-address 127.0.0.1 --port "$port"
  --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port"
  --ray-client-server-port "$client_port" --dashboard-agent-listen-port "$agent_port"
  --temp-dir "$temp_dir" --disable-usage-stats)
[[ -n "$head_cpus" ]] && head_args+=(--num-cpus "$head_cpus")
[[ -n "$gpus" ]] && head_args+=(--num-gpus "$gpus")

echo "starting the Ray head on 127.0.0.1:$port (dashboard :$dashboard_port, temp dir $temp_dir)"
ray start "${head_args[@]}"

for ((i = 1; i <= workers; i++)); do
  echo "starting worker node $i/$workers ($worker_cpus CPUs)"
  # Each node its own temp dir: nodes sharing one would share runtime_resources/, where
  # each node's runtime-env agent unpacks and garbage-collects job working dirs.
  ray start --address "127.0.0.1:$port" --node-ip-address 127.0.0.1 \
    --temp-dir "$temp_dir/node-$i" --num-cpus "$worker_cpus" --num-gpus 0 \
    --dashboard-agent-listen-port "$((agent_port + i))" --disable-usage-stats
done

cat <<DONE

Ray cluster up: head 127.0.0.1:$port, $workers extra worker node(s), token auth on.
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$token_file
  ray status --address 127.0.0.1:$port
  ray job submit --address http://127.0.0.1:$dashboard_port --runtime-env cluster/runtime_env.yaml --working-dir . -- python -m imagen_ray.train --config configs/tiny/base.yaml --data memory
  RAY_ADDRESS=127.0.0.1:$port imagen-ray generate ...    # a driver on this machine
  cluster/stop-local.sh --temp-dir $temp_dir
DONE
