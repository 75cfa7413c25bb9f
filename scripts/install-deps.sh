#!/usr/bin/env bash
# Installs what `make test` and `make bench` need when it is missing. Idempotent;
# run as root on Debian (as the CI machines are), or with the tools already present.
set -euo pipefail

need_apt=()
want() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }
# Installed without its recommendations (exporters, a web console): tests run the
# server binary on a private port; the packaged service is stopped if it started.
need_prometheus=false

want python3 python3   # tests/readme.rs runs the README's Python client

for tool in "$@"; do
  case "$tool" in
    redis) want redis-server redis-server; want redis-cli redis-tools ;;
    perf) want perf linux-perf ;;
    bench) want redis-server redis-server; want redis-benchmark redis-tools
           want ab apache2-utils; want wrk wrk; want nginx nginx-light; want taskset util-linux
           want curl curl ;;
    cluster) want redis-server redis-server; want redis-cli redis-tools; want nginx nginx
           want ip iproute2; want ab apache2-utils; want wrk wrk
           # Debian builds nginx's stream proxy as a module of its own.
           [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream) ;;
    install) want systemd-analyze systemd ;;  # tests/install.rs checks the unit with it
    prometheus) command -v prometheus >/dev/null 2>&1 || need_prometheus=true ;;
    *) echo "install-deps: unknown tool $tool" >&2; exit 2 ;;
  esac
done

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "install-deps: installing Rust with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" \
      || rustup component add "$component"
  done
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

if $need_prometheus; then
  echo "install-deps: installing prometheus" >&2
  export DEBIAN_FRONTEND=noninteractive
  [ ${#need_apt[@]} -gt 0 ] || apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus
  # The package may start its own service on :9090; the tests start theirs.
  if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
fi
