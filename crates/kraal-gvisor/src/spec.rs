//! The OCI runtime spec (`config.json`) of a workspace bundle, built from typed fields.

use std::path::PathBuf;

use kraal_core::Resources;
use serde_json::{Value, json};

/// How runsc gets its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// runsc runs inside the workspace namespace and uses its host stack (`--network=host`).
    /// Works everywhere, including hosts where runsc cannot inspect PID 1's namespace.
    Host,
    /// runsc's user-space netstack takes over the namespace's interface (`--network=sandbox`).
    Sandbox,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::Sandbox => "sandbox",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "host" => Some(NetworkMode::Host),
            "sandbox" => Some(NetworkMode::Sandbox),
            _ => None,
        }
    }
}

/// Everything that varies between workspace bundles.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub rootfs: PathBuf,
    pub volume: PathBuf,
    pub guest_bin: PathBuf,
    pub guest_config: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub hostname: String,
    pub cgroup: String,
    pub resources: Resources,
    /// Agent CLIs mounted read-only at [`AGENTS_MOUNT`].
    pub agents: Option<PathBuf>,
    pub network: NetworkMode,
    pub netns: PathBuf,
    /// Host directories bound in (read-only unless writable).
    pub mounts: Vec<kraal_core::Mount>,
}

/// Where the host's agent CLIs appear inside the sandbox; its `.bin` is on `PATH`.
pub const AGENTS_MOUNT: &str = kraal_protocol::AGENTS_DIR;

/// Docker's default capability set: enough for package managers and build tools, without
/// the administrative capabilities.
pub(crate) const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// `/proc`, `/dev`, `/sys`, `/tmp` and friends: what every sandbox (workspace or build
/// step) mounts.
pub(crate) fn system_mounts() -> Vec<Value> {
    vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }),
        json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }),
    ]
}

/// The namespaces of a sandbox. In host mode it must stay in the namespace runsc was
/// started in; a `network` entry without a path would give it a new, empty one.
pub(crate) fn namespaces(network: NetworkMode, netns: &std::path::Path) -> Vec<Value> {
    let mut v = vec![
        json!({ "type": "pid" }),
        json!({ "type": "ipc" }),
        json!({ "type": "uts" }),
        json!({ "type": "mount" }),
    ];
    if network == NetworkMode::Sandbox {
        v.push(json!({ "type": "network", "path": netns }));
    }
    v
}

impl BundleSpec {
    pub fn oci_config(&self) -> Value {
        let bind = |src: &PathBuf, dst: &str, rw: bool| {
            json!({
                "destination": dst,
                "type": "bind",
                "source": src,
                "options": ["rbind", if rw { "rw" } else { "ro" }],
            })
        };
        let namespaces = namespaces(self.network, &self.netns);
        let quota = (self.resources.cpus * 100_000.0).round() as i64;
        let mut mounts = system_mounts();
        mounts.extend([
            bind(&self.volume, "/workspace", true),
            bind(&self.guest_bin, "/.kraal/kraal-guest", false),
            bind(&self.guest_config, "/.kraal/guest.json", false),
            bind(&self.resolv_conf, "/etc/resolv.conf", false),
            bind(&self.hosts, "/etc/hosts", false),
        ]);
        if let Some(agents) = &self.agents {
            mounts.push(bind(agents, AGENTS_MOUNT, false));
        }
        for m in &self.mounts {
            mounts.push(bind(&m.host, &m.path, m.writable));
        }
        json!({
            "ociVersion": "1.0.2",
            "root": { "path": self.rootfs, "readonly": false },
            "hostname": self.hostname,
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": ["/.kraal/kraal-guest", "--config", "/.kraal/guest.json"],
                "env": [
                    format!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}", kraal_protocol::AGENTS_BIN),
                    "HOME=/root",
                    "LANG=C.UTF-8",
                ],
                "cwd": "/",
                "capabilities": {
                    "bounding": CAPS, "effective": CAPS, "permitted": CAPS, "inheritable": CAPS, "ambient": [],
                },
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576 }],
                "noNewPrivileges": false,
            },
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "cgroupsPath": self.cgroup,
                "resources": {
                    "memory": { "limit": self.resources.memory_mib * 1024 * 1024 },
                    "cpu": { "quota": quota, "period": 100000 },
                    "pids": { "limit": self.resources.pids },
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(network: NetworkMode) -> BundleSpec {
        let p = |s: &str| PathBuf::from(format!("/var/lib/kraal/workspaces/ws-0000000001/{s}"));
        BundleSpec {
            rootfs: p("rootfs"),
            volume: p("volume"),
            guest_bin: PathBuf::from("/usr/local/lib/kraal/kraal-guest"),
            guest_config: p("guest/guest.json"),
            resolv_conf: p("guest/resolv.conf"),
            hosts: p("guest/hosts"),
            hostname: "demo".into(),
            cgroup: "/kraal/ws-0000000001".into(),
            resources: Resources {
                cpus: 1.5,
                memory_mib: 1024,
                pids: 512,
            },
            agents: Some(PathBuf::from("/usr/local/lib/kraal/agents")),
            network,
            netns: PathBuf::from("/run/netns/kraal-0000000001"),
            mounts: vec![
                kraal_core::Mount::parse("/srv/shared:/shared").unwrap(),
                kraal_core::Mount::parse("/srv/out:/mnt/out:rw").unwrap(),
            ],
        }
    }

    /// Golden test: the committed file is the reviewed spec. Set `KRAAL_UPDATE_GOLDEN=1`
    /// to rewrite it after an intended change.
    #[test]
    fn oci_config_golden() {
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/config-host.json");
        let got =
            serde_json::to_string_pretty(&sample(NetworkMode::Host).oci_config()).unwrap() + "\n";
        if std::env::var_os("KRAAL_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(std::path::Path::new(golden).parent().unwrap()).unwrap();
            std::fs::write(golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(golden)
            .expect("golden file exists (KRAAL_UPDATE_GOLDEN=1 to create)");
        assert_eq!(got, want);
    }

    #[test]
    fn limits_and_namespaces() {
        let v = sample(NetworkMode::Sandbox).oci_config();
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 150000);
        assert_eq!(
            v["linux"]["resources"]["memory"]["limit"],
            1024u64 * 1024 * 1024
        );
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 512);
        assert_eq!(
            v["linux"]["namespaces"][4]["path"],
            "/run/netns/kraal-0000000001"
        );
        let h = sample(NetworkMode::Host).oci_config();
        let ns = h["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter().all(|n| n["type"] != "network"),
            "host mode must inherit the netns runsc runs in"
        );
        let mounts = h["mounts"].as_array().unwrap();
        let ws = mounts
            .iter()
            .find(|m| m["destination"] == "/workspace")
            .unwrap();
        assert_eq!(ws["options"][1], "rw");
        let g = mounts
            .iter()
            .find(|m| m["destination"] == "/.kraal/kraal-guest")
            .unwrap();
        assert_eq!(
            g["options"][1], "ro",
            "the guest binary is read-only inside"
        );
        let a = mounts
            .iter()
            .find(|m| m["destination"] == AGENTS_MOUNT)
            .unwrap();
        assert_eq!(a["options"][1], "ro", "agent CLIs are read-only inside");
        assert!(
            h["process"]["env"][0]
                .as_str()
                .unwrap()
                .ends_with(":/opt/kraal/agents/node_modules/.bin")
        );
    }
}
