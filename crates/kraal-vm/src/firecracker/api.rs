//! Firecracker's HTTP API as typed requests: the bodies of the endpoints kraal uses, named
//! and shaped as in Firecracker's OpenAPI document (`src/firecracker/swagger/firecracker.yaml`),
//! and the ordered calls that configure, start, pause, snapshot and restore one microVM.

use serde::Serialize;

/// `PUT /boot-source` (`BootSource`: `kernel_image_path` required).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /machine-config` (`MachineConfiguration`: `vcpu_count` 1–32, `mem_size_mib`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    pub smt: bool,
    /// Needed for diff snapshots; full snapshots do without.
    pub track_dirty_pages: bool,
}

/// `PUT /drives/{drive_id}` (`Drive`: `drive_id`, `is_root_device` required; virtio-block
/// needs `path_on_host` and `is_read_only`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
    /// `Unsafe` (default) or `Writeback` (flushes reach the host file).
    pub cache_type: &'static str,
}

/// `PUT /network-interfaces/{iface_id}` (`NetworkInterface`: `iface_id`, `host_dev_name`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: String,
}

/// `PUT /vsock` (`Vsock`: `guest_cid` ≥ 3, `uds_path`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PUT /actions` (`InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm` (`Vm`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Vm {
    pub state: VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PUT /snapshot/create` (`SnapshotCreateParams`: both paths required).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotCreateParams {
    pub snapshot_type: &'static str,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

/// `PUT /snapshot/load` (`SnapshotLoadParams` with a `MemoryBackend`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    pub resume_vm: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryBackend {
    /// `File` or `Uffd`.
    pub backend_type: &'static str,
    pub backend_path: String,
}

/// `PUT /entropy` (`EntropyDevice`): a virtio-rng device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntropyDevice {}

/// One API request.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: serde_json::Value,
}

fn call(method: &'static str, path: impl Into<String>, body: impl Serialize) -> Call {
    Call {
        method,
        path: path.into(),
        body: serde_json::to_value(body).expect("API bodies serialize"),
    }
}

/// What one microVM boots with.
#[derive(Debug, Clone, PartialEq)]
pub struct VmDescription {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    /// `(id, path, read-only)` in attachment order (the guest finds roles by that order).
    pub drives: Vec<(String, String, bool)>,
    pub tap: String,
    pub mac: String,
}

/// The calls that configure and start a microVM, in order.
pub fn boot_calls(vm: &VmDescription) -> Vec<Call> {
    let mut v = vec![
        call(
            "PUT",
            "/machine-config",
            MachineConfiguration {
                vcpu_count: vm.vcpus.clamp(1, 32),
                mem_size_mib: vm.memory_mib,
                smt: false,
                track_dirty_pages: false,
            },
        ),
        call(
            "PUT",
            "/boot-source",
            BootSource {
                kernel_image_path: vm.kernel.clone(),
                initrd_path: Some(vm.initrd.clone()),
                boot_args: Some(vm.cmdline.clone()),
            },
        ),
    ];
    for (id, path, ro) in &vm.drives {
        v.push(call(
            "PUT",
            format!("/drives/{id}"),
            Drive {
                drive_id: id.clone(),
                path_on_host: path.clone(),
                is_root_device: false,
                is_read_only: *ro,
                cache_type: "Writeback",
            },
        ));
    }
    v.push(call(
        "PUT",
        "/network-interfaces/eth0",
        NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: vm.tap.clone(),
            guest_mac: vm.mac.clone(),
        },
    ));
    v.push(call("PUT", "/entropy", EntropyDevice {}));
    v.push(call(
        "PUT",
        "/actions",
        InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        },
    ));
    v
}

pub fn pause() -> Call {
    call(
        "PATCH",
        "/vm",
        Vm {
            state: VmState::Paused,
        },
    )
}

pub fn resume() -> Call {
    call(
        "PATCH",
        "/vm",
        Vm {
            state: VmState::Resumed,
        },
    )
}

/// Full snapshot of a paused VM: device state and memory files.
pub fn snapshot_create(state: &str, memory: &str) -> Call {
    call(
        "PUT",
        "/snapshot/create",
        SnapshotCreateParams {
            snapshot_type: "Full",
            snapshot_path: state.into(),
            mem_file_path: memory.into(),
        },
    )
}

/// Loads a snapshot into a fresh Firecracker process and resumes it.
pub fn snapshot_load(state: &str, memory: &str) -> Call {
    call(
        "PUT",
        "/snapshot/load",
        SnapshotLoadParams {
            snapshot_path: state.into(),
            mem_backend: MemoryBackend {
                backend_type: "File",
                backend_path: memory.into(),
            },
            resume_vm: true,
        },
    )
}

/// Asks the guest to reboot (i8042 Ctrl-Alt-Del); Firecracker exits when it does.
pub fn ctrl_alt_del() -> Call {
    call(
        "PUT",
        "/actions",
        InstanceActionInfo {
            action_type: ActionType::SendCtrlAltDel,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm() -> VmDescription {
        VmDescription {
            vcpus: 2,
            memory_mib: 1024,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.cpio".into(),
            cmdline: "console=ttyS0 kraal.disks=lower,volume".into(),
            drives: vec![
                ("lower".into(), "/img/rootfs.ext4".into(), true),
                ("volume".into(), "/ws/volume.ext4".into(), false),
            ],
            tap: "kh0123456789".into(),
            mac: "52:54:00:12:34:56".into(),
        }
    }

    /// The exact requests, as Firecracker's API document names paths and fields.
    #[test]
    fn boot_calls_golden() {
        let got: Vec<(String, String, serde_json::Value)> = boot_calls(&vm())
            .into_iter()
            .map(|c| (c.method.to_owned(), c.path, c.body))
            .collect();
        let want = vec![
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false}),
            ),
            (
                "PUT",
                "/boot-source",
                json!({"kernel_image_path": "/k/vmlinux", "initrd_path": "/k/initramfs.cpio", "boot_args": "console=ttyS0 kraal.disks=lower,volume"}),
            ),
            (
                "PUT",
                "/drives/lower",
                json!({"drive_id": "lower", "path_on_host": "/img/rootfs.ext4", "is_root_device": false, "is_read_only": true, "cache_type": "Writeback"}),
            ),
            (
                "PUT",
                "/drives/volume",
                json!({"drive_id": "volume", "path_on_host": "/ws/volume.ext4", "is_root_device": false, "is_read_only": false, "cache_type": "Writeback"}),
            ),
            (
                "PUT",
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "host_dev_name": "kh0123456789", "guest_mac": "52:54:00:12:34:56"}),
            ),
            ("PUT", "/entropy", json!({})),
            ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
        ];
        let want: Vec<(String, String, serde_json::Value)> = want
            .into_iter()
            .map(|(m, p, b)| (m.to_owned(), p.to_owned(), b))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn vm_state_and_snapshot_calls_golden() {
        assert_eq!(pause().body, json!({"state": "Paused"}));
        assert_eq!((resume().method, resume().path.as_str()), ("PATCH", "/vm"));
        assert_eq!(resume().body, json!({"state": "Resumed"}));
        assert_eq!(
            snapshot_create("/s/state", "/s/mem").body,
            json!({"snapshot_type": "Full", "snapshot_path": "/s/state", "mem_file_path": "/s/mem"})
        );
        assert_eq!(
            snapshot_load("/s/state", "/s/mem").body,
            json!({"snapshot_path": "/s/state", "mem_backend": {"backend_type": "File", "backend_path": "/s/mem"}, "resume_vm": true})
        );
        assert_eq!(
            ctrl_alt_del().body,
            json!({"action_type": "SendCtrlAltDel"})
        );
        let v = serde_json::to_value(Vsock {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
        })
        .unwrap();
        assert_eq!(v, json!({"guest_cid": 3, "uds_path": "/v.sock"}));
    }

    /// Each body carries the fields the API document marks required, and enum values it
    /// lists; a change that drops one fails here.
    #[test]
    fn bodies_have_the_required_fields_and_valid_enums() {
        let required: &[(&str, &[&str])] = &[
            ("/machine-config", &["mem_size_mib", "vcpu_count"]),
            ("/boot-source", &["kernel_image_path"]),
            (
                "/drives/",
                &["drive_id", "is_root_device", "path_on_host", "is_read_only"],
            ),
            ("/network-interfaces/", &["host_dev_name", "iface_id"]),
            ("/actions", &["action_type"]),
        ];
        for c in boot_calls(&vm()) {
            let (_, fields) = required
                .iter()
                .find(|(p, _)| c.path.starts_with(p))
                .unwrap_or(&("", &[]));
            for f in *fields {
                assert!(c.body.get(f).is_some(), "{} lacks {f}", c.path);
            }
            if let Some(t) = c.body.get("cache_type") {
                assert!(["Unsafe", "Writeback"].contains(&t.as_str().unwrap()));
            }
        }
        let n = boot_calls(&VmDescription { vcpus: 64, ..vm() })[0].body["vcpu_count"].clone();
        assert_eq!(n, 32, "the API allows 1 to 32 vCPUs");
        let load = snapshot_load("a", "b").body;
        assert!(
            load.get("mem_file_path").is_none(),
            "exactly one of mem_file_path and mem_backend"
        );
    }
}
