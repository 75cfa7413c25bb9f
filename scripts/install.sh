#!/usr/bin/env bash
# Installs ticketd and loadgen, the systemd unit and a first config file.
#   scripts/install.sh [--bin DIR] [--prefix /usr/local] [--sysconfdir /etc] [--destdir D]
# --destdir stages everything under D (for packaging and tests) and touches no service.
# An existing config file is kept: it is the operator's.
set -euo pipefail

bin=target/release prefix=/usr/local sysconfdir=/etc destdir=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --sysconfdir) sysconfdir=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    *) echo "install: unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
for program in ticketd loadgen; do
  [ -x "$bin/$program" ] || { echo "install: $bin/$program is missing: run make release" >&2; exit 1; }
done

bindir=$prefix/bin
unitdir=$sysconfdir/systemd/system
install -d "$destdir$bindir" "$destdir$sysconfdir/ticketd" "$destdir$unitdir"
install -m 0755 "$bin/ticketd" "$bin/loadgen" "$destdir$bindir/"
sed -e "s|@BINDIR@|$bindir|g" -e "s|@SYSCONFDIR@|$sysconfdir|g" \
  "$here/packaging/ticketd.service.in" >"$destdir$unitdir/ticketd.service"
chmod 0644 "$destdir$unitdir/ticketd.service"
config=$destdir$sysconfdir/ticketd/ticketd.toml
if [ -e "$config" ]; then
  echo "install: kept $config (yours); the shipped one is packaging/ticketd.toml"
else
  install -m 0644 "$here/packaging/ticketd.toml" "$config"
fi
"$destdir$bindir/ticketd" --config "$config" --check-config >/dev/null

echo "install: ticketd and loadgen in $destdir$bindir, unit $destdir$unitdir/ticketd.service, config $config"
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "install: start it with: systemctl enable --now ticketd"
elif [ -z "$destdir" ]; then
  echo "install: systemd is not running here; run $bindir/ticketd --config $sysconfdir/ticketd/ticketd.toml"
fi
