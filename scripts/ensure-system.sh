#!/usr/bin/env bash
# Installs the Debian packages transferbench needs, when missing: the built-in datasets
# (Fashion-MNIST, fortunes) and the headless browser the dashboard's tests drive (chromium).
set -euo pipefail
need=()
for pkg in dataset-fashion-mnist fortunes chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
