//! The typed description of one microVM and the `qemu-system-x86_64` command line it
//! becomes (golden-tested): `-M microvm`, KVM or TCG, direct kernel boot, virtio-mmio
//! block devices identified by serial, a TAP network device, QMP on a Unix socket, the
//! serial console into a file, and `-no-reboot` so a guest reset ends the process.

use std::path::PathBuf;

/// How guest code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`/dev/kvm`, checked by a bounded probe).
    Kvm,
    /// QEMU's software emulation: slower, runs anywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One virtio block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Becomes the device serial `kraal-<role>`, which the guest maps back to a role.
    pub role: &'static str,
    pub path: PathBuf,
    pub readonly: bool,
}

/// A host directory shared through virtio-fs (its `virtiofsd` listens on `socket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    pub tag: String,
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// Shown by `ps` and QEMU (`-name`).
    pub name: String,
    pub accel: Accel,
    /// Firmware: qboot boots the kernel directly and fast; SeaBIOS (QEMU's default)
    /// probes the virtio disks first and trips over the config disk.
    pub bios: Option<PathBuf>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub tap: String,
    pub mac: String,
    pub shares: Vec<FsShare>,
    pub qmp: PathBuf,
    pub console: PathBuf,
    pub pidfile: PathBuf,
    /// Restore from a snapshot file: start paused, waiting for `migrate-incoming`.
    pub incoming: bool,
}

impl VmSpec {
    pub fn argv(&self) -> Vec<String> {
        let mut a = Args::default();
        a.kv(
            "-name",
            format!("kraal-{},process=kraal-{}", self.name, self.name),
        );
        a.kv("-machine", "microvm,isa-serial=on,rtc=on");
        match self.accel {
            Accel::Kvm => a.kv("-accel", "kvm").kv("-cpu", "host"),
            Accel::Tcg => a.kv("-accel", "tcg,thread=multi").kv("-cpu", "max"),
        };
        if let Some(b) = &self.bios {
            a.kv("-bios", b.display().to_string());
        }
        a.kv("-smp", self.cpus.max(1).to_string());
        a.kv("-m", format!("{}M", self.memory_mib));
        if !self.shares.is_empty() {
            // vhost-user devices (virtio-fs) need guest memory their daemon can map.
            a.kv(
                "-object",
                format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
            );
            a.kv("-machine", "memory-backend=mem");
        }
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            a.0.push(flag.to_owned());
        }
        a.kv("-kernel", self.kernel.display().to_string());
        a.kv("-initrd", self.initrd.display().to_string());
        a.kv("-append", &self.cmdline);
        a.kv(
            "-chardev",
            format!("file,id=console,path={}", self.console.display()),
        );
        a.kv("-serial", "chardev:console");
        for d in &self.disks {
            a.kv(
                "-drive",
                format!(
                    "id={r},file={p},format=raw,if=none,cache=none,aio=threads,discard=unmap{ro}",
                    r = d.role,
                    p = d.path.display(),
                    ro = if d.readonly { ",readonly=on" } else { "" }
                ),
            );
            a.kv(
                "-device",
                format!("virtio-blk-device,drive={r},serial=kraal-{r}", r = d.role),
            );
        }
        a.kv(
            "-netdev",
            format!("tap,id=net0,ifname={},script=no,downscript=no", self.tap),
        );
        a.kv(
            "-device",
            format!("virtio-net-device,netdev=net0,mac={}", self.mac),
        );
        a.kv("-device", "virtio-rng-device");
        for (i, s) in self.shares.iter().enumerate() {
            a.kv(
                "-chardev",
                format!("socket,id=fs{i},path={}", s.socket.display()),
            );
            a.kv(
                "-device",
                format!("vhost-user-fs-device,chardev=fs{i},tag={}", s.tag),
            );
        }
        a.kv(
            "-qmp",
            format!("unix:{},server=on,wait=off", self.qmp.display()),
        );
        a.kv("-pidfile", self.pidfile.display().to_string());
        if self.incoming {
            a.kv("-incoming", "defer");
        }
        a.0.push("-daemonize".into());
        a.0
    }
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn kv(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.0.push(k.to_owned());
        self.0.push(v.into());
        self
    }
}

/// A stable, locally administered unicast MAC address derived from `seed`.
pub fn mac_for(seed: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(seed.as_bytes());
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "ws-0123456789".into(),
            accel: Accel::Tcg,
            bios: Some("/usr/share/qemu/qboot.rom".into()),
            cpus: 2,
            memory_mib: 1024,
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initramfs.cpio".into(),
            cmdline: "console=ttyS0 quiet".into(),
            disks: vec![
                Disk {
                    role: "lower",
                    path: "/img/rootfs.ext4".into(),
                    readonly: true,
                },
                Disk {
                    role: "volume",
                    path: "/ws/volume.ext4".into(),
                    readonly: false,
                },
            ],
            tap: "kh0123456789".into(),
            mac: "52:54:00:12:34:56".into(),
            shares: vec![],
            qmp: "/ws/qmp.sock".into(),
            console: "/ws/console.log".into(),
            pidfile: "/ws/qemu.pid".into(),
            incoming: false,
        }
    }

    #[test]
    fn argv_golden() {
        let got = spec().argv().join(" ");
        let want = "-name kraal-ws-0123456789,process=kraal-ws-0123456789 \
-machine microvm,isa-serial=on,rtc=on -accel tcg,thread=multi -cpu max \
-bios /usr/share/qemu/qboot.rom -smp 2 -m 1024M \
-nodefaults -no-user-config -nographic -no-reboot \
-kernel /k/vmlinuz -initrd /k/initramfs.cpio -append console=ttyS0 quiet \
-chardev file,id=console,path=/ws/console.log -serial chardev:console \
-drive id=lower,file=/img/rootfs.ext4,format=raw,if=none,cache=none,aio=threads,discard=unmap,readonly=on \
-device virtio-blk-device,drive=lower,serial=kraal-lower \
-drive id=volume,file=/ws/volume.ext4,format=raw,if=none,cache=none,aio=threads,discard=unmap \
-device virtio-blk-device,drive=volume,serial=kraal-volume \
-netdev tap,id=net0,ifname=kh0123456789,script=no,downscript=no \
-device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56 -device virtio-rng-device \
-qmp unix:/ws/qmp.sock,server=on,wait=off -pidfile /ws/qemu.pid -daemonize";
        assert_eq!(got, want);
    }

    #[test]
    fn kvm_shares_and_restore_change_only_their_parts() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.incoming = true;
        s.shares = vec![FsShare {
            tag: "share0".into(),
            socket: "/ws/fs0.sock".into(),
        }];
        let a = s.argv().join(" ");
        assert!(a.contains("-accel kvm -cpu host"));
        assert!(a.contains(
            "-object memory-backend-memfd,id=mem,size=1024M,share=on -machine memory-backend=mem"
        ));
        assert!(a.contains("-chardev socket,id=fs0,path=/ws/fs0.sock -device vhost-user-fs-device,chardev=fs0,tag=share0"));
        assert!(a.ends_with("-incoming defer -daemonize"));
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let m = mac_for("ws-1");
        assert_eq!(m, mac_for("ws-1"));
        assert_ne!(m, mac_for("ws-2"));
        assert!(m.starts_with("52:54:"));
        assert_eq!(m.len(), 17);
    }
}
