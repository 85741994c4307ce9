#!/usr/bin/env bash
# Sets kraal up and runs it on its defaults (SQLite state, auto-detected backend): starts
# the daemon if it is not running, creates a workspace from a directory (default: this
# repository) and runs a command in it.
set -euo pipefail
cd "$(dirname "$0")/.."
src="$(realpath "${1:-.}")"

./scripts/setup.sh
export PATH=/usr/local/bin:$PATH

if ! kraal status >/dev/null 2>&1; then
    if [ -d /run/systemd/system ] && systemctl start kraal 2>/dev/null; then
        echo "started the kraal systemd service"
    else
        mkdir -p /var/log
        nohup kraal serve >>/var/log/kraal.log 2>&1 &
        echo "started kraal serve in the background (log: /var/log/kraal.log)"
    fi
    for _ in $(seq 1 100); do kraal status >/dev/null 2>&1 && break; sleep 0.1; done
fi
kraal host check
kraal status
name="$(basename "$src" | tr 'A-Z_.' 'a-z--' | tr -cd 'a-z0-9-' | sed 's/^-*//;s/-*$//')"
[ -n "$name" ] || name=workspace
existing=$(kraal ls --json)
if grep -q "\"name\": \"$name\"" <<<"$existing"; then
    kraal up "$name"
else
    kraal up "$src" --name "$name"
fi
kraal ls
kraal exec "$name" -- git status --short --branch
echo
echo "next: kraal shell $name   |   kraal exec $name -- <cmd>   |   kraal down $name"
