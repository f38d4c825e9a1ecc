# Shared by the shell benchmarks (sourced): a work directory removed on exit, a kit of one
# random model file, and a local docker-registry on 127.0.0.1:$port.
#
# Sets: work (the directory), reg_pid. Call: bench_setup NAME SIZE_MIB PORT.

bench_setup() {
  local name=$1 size_mib=$2 port=$3
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/$name.XXXXXX")
  reg_pid=
  trap 'bench_cleanup' EXIT
  mkdir -p "$work/kit" "$work/reg"
  head -c $((size_mib << 20)) /dev/urandom > "$work/kit/model.bin"
  printf 'manifestVersion: 1.0.0\npackage:\n  name: bench\nmodel:\n  name: bench\n  path: model.bin\n' > "$work/kit/Kitfile"
  cat > "$work/reg.yml" <<EOT
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/reg
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: bench
EOT
  docker-registry serve "$work/reg.yml" 2>/dev/null &
  reg_pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "docker-registry did not start on 127.0.0.1:$port" >&2
  return 1
}

bench_cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null
  rm -rf "$work"
}

# Runs a command quietly; its stderr is shown only if it fails (which ends the benchmark).
quiet() { "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; }
