#!/bin/sh
# vmrt's node installer, in the style of kata-deploy: run by the DaemonSet in
# vmrt-deploy.yaml on every node labelled vmrt.io/install=true, or by hand.
#
#   install.sh [--root DIR] [--artifacts DIR] [--no-systemd] [--node NAME]
#
# It copies vmrt (a self-contained venv under <artifacts>/opt/vmrt) to
# /opt/vmrt, writes /etc/vmrt/config.toml if there is none (an existing one
# is kept), installs the vmrtd unit and the kubelet drop-in, (re)starts vmrtd,
# measures this node's pod overhead with `vmrt overhead` and writes the
# RuntimeClass that uses it, and labels the node vmrt.io/runtime=true.
# Pods keep running across a re-run: an upgrade replaces /opt/vmrt and
# restarts vmrtd, whose unit does not kill QEMU; the new vmrtd adopts them.
# --root DIR: the node's filesystem is at DIR (/host in the DaemonSet).
# --root DIR --no-systemd: a dry run that only writes files under DIR.
set -eu

root=/
artifacts=/vmrt-artifacts
systemd=yes
node=${NODE_NAME:-}

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --artifacts) artifacts=$2; shift 2 ;;
    --no-systemd) systemd=no; shift ;;
    --node) node=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "vmrt-install: $*"; }

[ -x "$artifacts/opt/vmrt/venv/bin/vmrtd" ] || {
  echo "vmrt-install: no vmrt in $artifacts/opt/vmrt (expected venv/bin/vmrtd)" >&2; exit 1; }

# 1. vmrt itself: a new tree next to the old, then one rename.
mkdir -p "$root/opt"
rm -rf "$root/opt/vmrt.new"
cp -a "$artifacts/opt/vmrt" "$root/opt/vmrt.new"
if [ -d "$root/opt/vmrt" ]; then
  rm -rf "$root/opt/vmrt.old"
  mv "$root/opt/vmrt" "$root/opt/vmrt.old"
fi
mv "$root/opt/vmrt.new" "$root/opt/vmrt"
say "installed $root/opt/vmrt"

# 2. The config, unless the node has one.
mkdir -p "$root/etc/vmrt"
if [ ! -e "$root/etc/vmrt/config.toml" ]; then
  cat > "$root/etc/vmrt/config.toml" <<'CONFIG'
# Written by vmrt's node installer; edit freely, a re-run keeps it.
[cri]
socket = "/run/vmrt/vmrt.sock"
[runtime_handlers.vmrt]
[metrics]
address = "127.0.0.1:9464"
CONFIG
  say "wrote $root/etc/vmrt/config.toml"
fi

# 3. The units.
mkdir -p "$root/etc/systemd/system/kubelet.service.d"
cp "$here/systemd/vmrtd.service" "$root/etc/systemd/system/vmrtd.service"
cp "$here/kubelet/10-vmrt.conf" "$root/etc/systemd/system/kubelet.service.d/10-vmrt.conf"
say "installed the vmrtd unit and the kubelet drop-in"

[ "$systemd" = yes ] || { say "dry run under $root: not starting vmrtd"; exit 0; }

# From a DaemonSet pod, systemctl must act in the host's namespaces.
host() { if [ "$(readlink /proc/1/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ]; then "$@";
         else nsenter -t 1 -m -u -i -n -p -- "$@"; fi; }
host systemctl daemon-reload
host systemctl enable vmrtd.service
host systemctl restart vmrtd.service
say "vmrtd (re)started; running pods are adopted"

# 4. This node's overhead, in the RuntimeClass. vmrtd answers CRI first.
ready=no
for i in $(seq 120); do
  if host /opt/vmrt/venv/bin/vmrt pods >/dev/null 2>&1; then ready=yes; break; fi
  sleep 1
done
[ "$ready" = yes ] || { echo "vmrt-install: vmrtd does not answer on /run/vmrt/vmrt.sock" \
                         "after 120 s (journalctl -u vmrtd)" >&2; exit 1; }
measured="$root/etc/vmrt/runtimeclass-vmrt.yaml"
host /opt/vmrt/venv/bin/vmrt overhead --runtime vmrt --runtimeclass vmrt > "$measured.new"
mv "$measured.new" "$measured"
say "measured: $(grep vmrt.io/measured "$measured")"
if command -v kubectl >/dev/null 2>&1; then
  # One RuntimeClass for the cluster: the first node's figures stay (a
  # cluster of TCG and KVM nodes needs one class per kind; see README.md).
  kubectl get runtimeclass vmrt >/dev/null 2>&1 || kubectl apply -f "$measured"
  [ -z "$node" ] || kubectl label node "$node" vmrt.io/runtime=true --overwrite
fi
say "done"
