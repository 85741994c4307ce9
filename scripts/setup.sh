#!/usr/bin/env bash
# Installs everything kraal needs on Debian 12 (run as root) and builds and installs it:
# system packages (runsc and QEMU from bookworm-backports, debootstrap, nftables, iproute2, git),
# the Rust musl target for the static guest agent, cargo-nextest for the test suite, the
# agent CLIs from npm (agent-clis/),
# then /usr/local/bin/kraal and /usr/local/lib/kraal/kraal-guest. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (kraal manages network namespaces, mounts and cgroups)"
. /etc/os-release
[ "${ID:-}" = debian ] || die "this script supports Debian (found ${ID:-unknown})"

if [ "${VERSION_CODENAME:-}" = bookworm ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "enabling bookworm-backports (for a 2024 runsc)"
    cat > /etc/apt/sources.list.d/kraal-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

pkgs=(debootstrap e2fsprogs nftables iproute2 util-linux git ca-certificates musl-tools gcc libc6-dev pkg-config libseccomp-dev libcap-ng-dev openssh-client python3)
need_apt=0
for p in "${pkgs[@]}" runsc qemu-system-x86; do dpkg -s "$p" >/dev/null 2>&1 || need_apt=1; done
if [ "${VERSION_CODENAME:-}" = bookworm ] && dpkg -s runsc >/dev/null 2>&1; then
    # bookworm's own runsc (2022) is too old for checkpoint/restore and cgroup handling we rely on.
    dpkg --compare-versions "$(dpkg-query -W -f='${Version}' runsc)" ge 0.0~20240101 || need_apt=1
fi
if dpkg -s qemu-system-x86 >/dev/null 2>&1; then
    # VM snapshots save memory with `migrate` to a file: URI (QEMU 8.2 and later).
    dpkg --compare-versions "$(dpkg-query -W -f='${Version}' qemu-system-x86)" ge 1:8.2 || need_apt=1
fi
if [ "$need_apt" = 1 ]; then
    log "installing system packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        apt-get install -y -qq -t bookworm-backports runsc qemu-system-x86 >/dev/null
    else
        apt-get install -y -qq runsc qemu-system-x86 >/dev/null
    fi
fi
# Read the whole output: `| head -1` under pipefail can kill runsc with SIGPIPE (exit 141).
runsc_version=$(runsc --version)
log "${runsc_version%%$'\n'*}"

command -v cargo >/dev/null || die "Rust is missing: install rustup (https://rustup.rs or Debian trixie's 'rustup' package), then re-run"
if command -v rustup >/dev/null; then
    log "Rust toolchain (rust-toolchain.toml) with the musl target"
    rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
    case $'\n'"$(rustup target list --installed)"$'\n' in
        *$'\nx86_64-unknown-linux-musl\n'*) ;;
        *) rustup target add x86_64-unknown-linux-musl ;;
    esac
fi
if ! command -v virtiofsd >/dev/null && [ ! -x /usr/libexec/virtiofsd ] && [ ! -x "$HOME/.cargo/bin/virtiofsd" ]; then
    # Serves host directories mounted into QEMU microVMs; no Debian 12 package has it.
    log "installing virtiofsd (cargo install)"
    cargo install --locked --quiet virtiofsd
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing Node.js and npm (for the agent CLIs)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -x agent-clis/node_modules/.bin/claude ] || [ agent-clis/package-lock.json -nt agent-clis/node_modules/.package-lock.json ]; then
    log "installing the agent CLIs from npm (agent-clis/package-lock.json)"
    # `npm install --no-save` rather than `npm ci`: Qwen Code lists platform packages that
    # were never published (404), which `npm ci` refuses as an out-of-sync lock; the lock
    # still pins every version installed.
    npm install --prefix agent-clis --no-audit --no-fund --no-save --loglevel=error
fi

if [ ! -f web/node_modules/htmx.org/dist/htmx.min.js ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
    log "installing the web UI's front-end packages from npm (web/package-lock.json)"
    npm install --prefix web --no-audit --no-fund --no-save --loglevel=error
fi

# The browser tests drive Debian's Chromium; the image tests check OCI layouts with skopeo
# and pull from a local registry; the export tests list export files with tar --zstd
# (test.sh asks for them).
if [ "${KRAAL_SETUP_TEST_DEPS:-0}" = 1 ]; then
    for p in chromium skopeo docker-registry zstd; do
        if ! dpkg -s "$p" >/dev/null 2>&1; then
            log "installing $p for the tests"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
        fi
    done
    # An S3-compatible server for the backup tests (moto, from PyPI, in its own venv).
    if [ ! -x /opt/kraal-test/venv/bin/moto_server ]; then
        dpkg -s python3-venv >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        log "installing moto (S3 test server)"
        python3 -m venv /opt/kraal-test/venv
        /opt/kraal-test/venv/bin/pip install -q 'moto[server]==5.1.*'
    fi
    # The API is fuzzed from its OpenAPI document with schemathesis (pinned).
    if [ ! -x /opt/kraal-test/venv/bin/schemathesis ]; then
        log "installing schemathesis (API fuzzing)"
        /opt/kraal-test/venv/bin/pip install -q 'schemathesis==4.32.5'
    fi
    # The Kubernetes manifests are checked against the API's JSON schemas (pinned).
    if [ ! -x /opt/kraal-test/venv/bin/kubernetes-validate ]; then
        log "installing kubernetes-validate (Kubernetes schemas)"
        /opt/kraal-test/venv/bin/pip install -q 'kubernetes-validate==1.37.0'
    fi
    # The tests start their own registry on loopback; the packaged service is not needed.
    if [ -d /run/systemd/system ]; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
fi

if [ "${KRAAL_SETUP_SKIP_INSTALL:-0}" != 1 ]; then
    # The agent CLIs every sandbox gets read-only at /opt/kraal/agents.
    agents=/usr/local/lib/kraal/agents
    if ! cmp -s agent-clis/package-lock.json "$agents/package-lock.json"; then
        log "installing the agent CLIs to $agents"
        rm -rf "$agents.new"
        mkdir -p "$agents.new"
        cp -a agent-clis/package.json agent-clis/package-lock.json agent-clis/node_modules "$agents.new/"
        rm -rf "$agents.old"
        [ -d "$agents" ] && mv "$agents" "$agents.old"
        mv "$agents.new" "$agents"
        rm -rf "$agents.old"
    fi
    log "building kraal and the static guest agent"
    cargo build --release -q -p kraal
    cargo build --release -q -p kraal-guest --target x86_64-unknown-linux-musl
    install -D -m 0755 target/release/kraal /usr/local/bin/kraal
    install -D -m 0755 target/x86_64-unknown-linux-musl/release/kraal-guest /usr/local/lib/kraal/kraal-guest
    kraal completions bash > /usr/share/bash-completion/completions/kraal 2>/dev/null || true
    if [ -d /run/systemd/system ]; then
        cat > /etc/systemd/system/kraal.service <<'UNIT'
[Unit]
Description=kraal daemon
After=network-online.target

[Service]
# Model API credentials (ANTHROPIC_API_KEY=…, OPENAI_API_KEY=…); only the daemon reads them.
EnvironmentFile=-/etc/kraal/env
ExecStart=/usr/local/bin/kraal serve
# Sandboxes outlive daemon restarts: only the daemon process is stopped.
KillMode=process
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
        systemctl daemon-reload || true
    fi
    log "installed $(kraal --version) to /usr/local/bin"
fi
