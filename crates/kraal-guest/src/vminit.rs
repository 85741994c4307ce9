//! PID 1 in a microVM, before the guest agent proper starts: mounts the kernel file
//! systems, loads the initramfs's modules, finds the disks by role, assembles the root
//! (shared read-only image + per-workspace writable layer, overlayfs), mounts the volume
//! and host shares, switches into the root, configures the network, hostname and DNS from
//! the boot config, and hands that config to the guest agent.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use serde::Deserialize;

use crate::config::Config;

/// Roles of the block devices, named by each disk's serial (`kraal-<role>`) or, where the
/// hypervisor has no disk serials (Firecracker), by `kraal.disks=` on the kernel command
/// line in attachment order.
pub const ROLES: [&str; 4] = ["lower", "upper", "volume", "config"];
/// Disks that may be attached: the agent CLIs for images without their own.
pub const OPTIONAL_ROLES: [&str; 1] = ["agents"];

/// Printed on the console by a probe boot (`kraal.probe` on the kernel command line).
pub const PROBE_OK: &str = "kraal-guest: probe boot reached init";

/// What the host writes to the config disk (JSON, zero-padded).
#[derive(Debug, Deserialize)]
pub struct Boot {
    pub guest: Config,
    pub vm: VmConfig,
}

#[derive(Debug, Deserialize)]
pub struct VmConfig {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub resolv_conf: String,
    #[serde(default)]
    pub hosts: String,
    #[serde(default)]
    pub hostname: String,
    /// virtio-fs shares mounted into the root.
    #[serde(default)]
    pub shares: Vec<Share>,
}

#[derive(Debug, Deserialize)]
pub struct Share {
    pub tag: String,
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(err(format!("mkdir {target}")))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(err(format!("mount {fstype} {src} on {target}")))
}

/// Runs the whole boot; the returned config starts the guest agent.
pub fn boot() -> Result<Config, String> {
    let t0 = Instant::now();
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == "kraal.probe") {
        // The host checks that this kernel boots under its accelerator; nothing else.
        eprintln!("{PROBE_OK}");
        power_off();
    }
    load_modules();
    let disks = find_disks(&cmdline, Duration::from_secs(30))?;
    let optional = |role: &str| {
        disks
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, d)| d.clone())
    };
    let disk = |role: &str| optional(role).expect("required roles are found");
    let boot = read_config(&disk("config"))?;

    // Root: the image read-only, this workspace's writable layer over it.
    let ext4 = |dev: &Path, target: &str, ro: bool| {
        let flags = if ro {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mount_fs(&dev.to_string_lossy(), target, "ext4", flags, None)
    };
    ext4(&disk("lower"), "/run/lower", true)?;
    ext4(&disk("upper"), "/run/rw", false)?;
    for d in ["/run/rw/upper", "/run/rw/work"] {
        std::fs::create_dir_all(d).map_err(err(format!("mkdir {d}")))?;
    }
    mount_fs(
        "overlay",
        "/newroot",
        "overlay",
        MsFlags::empty(),
        Some("lowerdir=/run/lower,upperdir=/run/rw/upper,workdir=/run/rw/work"),
    )?;
    ext4(&disk("volume"), "/newroot/workspace", false)?;
    if let Some(agents) = optional("agents") {
        ext4(
            &agents,
            &format!("/newroot{}", kraal_protocol::AGENTS_DIR),
            true,
        )?;
    }
    for s in &boot.vm.shares {
        let target = format!("/newroot{}", s.path);
        let flags = if s.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mount_fs(&s.tag, &target, "virtiofs", flags, None)?;
    }
    for d in ["dev", "proc", "sys"] {
        let target = format!("/newroot/{d}");
        std::fs::create_dir_all(&target).map_err(err(format!("mkdir {target}")))?;
        mount(
            Some(format!("/{d}").as_str()),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(err(format!("move /{d}")))?;
    }
    // The initramfs cannot be pivoted away from: move the new root over it and chroot.
    std::env::set_current_dir("/newroot").map_err(err("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(err("move the root"))?;
    nix::unistd::chroot(".").map_err(err("chroot"))?;
    std::env::set_current_dir("/").map_err(err("chdir /"))?;

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    mount_fs("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777"))?;
    mount_fs("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755"))?;

    network(&boot.vm)?;
    let hostname = if boot.vm.hostname.is_empty() {
        "kraal"
    } else {
        boot.vm.hostname.as_str()
    };
    nix::unistd::sethostname(hostname).map_err(err("sethostname"))?;
    if !boot.vm.resolv_conf.is_empty() {
        // A symlink (systemd-resolved style) would point outside; replace it.
        let _ = std::fs::remove_file("/etc/resolv.conf");
        std::fs::write("/etc/resolv.conf", &boot.vm.resolv_conf)
            .map_err(err("write /etc/resolv.conf"))?;
    }
    if !boot.vm.hosts.is_empty() {
        std::fs::write("/etc/hosts", &boot.vm.hosts).map_err(err("write /etc/hosts"))?;
    }
    eprintln!(
        "kraal-guest: booted in {} ms (since init)",
        t0.elapsed().as_millis()
    );
    Ok(boot.guest)
}

/// Loads the modules listed in the initramfs, in order. A module that fails is reported
/// and skipped: the device it drives is then reported missing by name.
fn load_modules() {
    let Ok(order) = std::fs::read_to_string("/lib/modules/load-order") else {
        return;
    };
    for name in order.lines().filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{name}.ko");
        let r = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::kmod::finit_module(
                    &f,
                    &CString::default(),
                    nix::kmod::ModuleInitFlags::empty(),
                )
                .map_err(|e| e.to_string())
            });
        match r {
            Ok(()) => {}
            Err(e) if e.contains("EEXIST") => {}
            Err(e) => eprintln!("kraal-guest: cannot load module {name}: {e}"),
        }
    }
}

/// Maps roles to block devices, waiting for the devices to appear.
pub fn find_disks(cmdline: &str, wait: Duration) -> Result<Vec<(String, PathBuf)>, String> {
    let order: Option<Vec<String>> = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kraal.disks="))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let deadline = Instant::now() + wait;
    loop {
        let mut devs: Vec<String> = std::fs::read_dir("/sys/block")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| n.starts_with("vd"))
                    .collect()
            })
            .unwrap_or_default();
        devs.sort_by_key(|n| (n.len(), n.clone()));
        let found = assign_roles(&devs, order.as_deref(), &|dev| {
            std::fs::read_to_string(format!("/sys/block/{dev}/serial")).ok()
        });
        if let Ok(found) = found {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return found.map_err(|missing| {
                format!(
                    "disks missing after {} s: {missing} (block devices: {devs:?})",
                    wait.as_secs()
                )
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pure role assignment: by serial, else by the command line's order.
pub fn assign_roles(
    devs: &[String],
    order: Option<&[String]>,
    serial: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    let find = |role: &str| {
        let by_serial = devs.iter().find(|d| {
            serial(d).is_some_and(|s| s.trim_end_matches('\0').trim() == format!("kraal-{role}"))
        });
        let by_order = order
            .and_then(|o| o.iter().position(|r| r == role))
            .and_then(|i| devs.get(i));
        by_serial
            .or(by_order)
            .map(|d| (role.to_owned(), PathBuf::from("/dev").join(d)))
    };
    for role in ROLES {
        out.push(find(role).ok_or_else(|| format!("no {role} disk"))?);
    }
    out.extend(OPTIONAL_ROLES.iter().filter_map(|r| find(r)));
    Ok(out)
}

/// The config disk holds JSON followed by zero padding.
fn read_config(dev: &Path) -> Result<Boot, String> {
    let data = std::fs::read(dev).map_err(err(format!("read {}", dev.display())))?;
    parse_config(&data)
}

pub fn parse_config(data: &[u8]) -> Result<Boot, String> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    serde_json::from_slice(&data[..end]).map_err(err("invalid boot config"))
}

/// Brings up `lo` and `eth0` with the configured address and default route.
fn network(vm: &VmConfig) -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    let fd = sock.as_raw_fd();
    if_up(fd, "lo")?;
    if_addr(fd, "eth0", libc::SIOCSIFADDR, vm.ip)?;
    if_addr(fd, "eth0", libc::SIOCSIFNETMASK, prefix_mask(vm.prefix))?;
    if_up(fd, "eth0")?;
    // SAFETY: a zeroed rtentry with the fields the kernel reads filled in.
    unsafe {
        let mut rt: libc::rtentry = std::mem::zeroed();
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(vm.gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        if libc::ioctl(fd, libc::SIOCADDRT as _, &rt) < 0 {
            return Err(format!(
                "default route via {}: {}",
                vm.gateway,
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

pub fn prefix_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - prefix.min(32) as u32)
            .unwrap_or(0),
    )
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it by family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

fn if_addr(fd: i32, name: &str, req: libc::c_ulong, ip: Ipv4Addr) -> Result<(), String> {
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    // SAFETY: `r` is a valid ifreq for this request.
    if unsafe { libc::ioctl(fd, req as _, &r) } < 0 {
        return Err(format!(
            "set {ip} on {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn if_up(fd: i32, name: &str) -> Result<(), String> {
    let mut r = ifreq(name);
    // SAFETY: `r` is a valid ifreq for both requests.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut r) < 0 {
            return Err(format!(
                "interface {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &r) < 0 {
            return Err(format!(
                "bring up {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Flushes and resets the machine; the hypervisor runs with `-no-reboot` (QEMU) or exits
/// on reset (Firecracker), so this ends the VM.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_found_by_serial_then_by_command_line_order() {
        let devs: Vec<String> = ["vda", "vdb", "vdc", "vdd"].map(String::from).to_vec();
        let serials = |d: &str| {
            Some(
                match d {
                    "vda" => "kraal-config",
                    "vdb" => "kraal-volume",
                    "vdc" => "kraal-upper",
                    _ => "kraal-lower",
                }
                .to_owned(),
            )
        };
        let r = assign_roles(&devs, None, &serials).unwrap();
        assert_eq!(r[0], ("lower".into(), PathBuf::from("/dev/vdd")));
        assert_eq!(r[3], ("config".into(), PathBuf::from("/dev/vda")));
        let order: Vec<String> = ROLES.map(String::from).to_vec();
        let r = assign_roles(&devs, Some(&order), &|_| None).unwrap();
        assert_eq!(r[2], ("volume".into(), PathBuf::from("/dev/vdc")));
        let e = assign_roles(&devs[..2], Some(&order), &|_| None).unwrap_err();
        assert_eq!(e, "no volume disk");
    }

    #[test]
    fn config_is_json_up_to_the_padding() {
        let mut data = br#"{"guest":{"listen":"0.0.0.0:7071","token":"t"},"vm":{"ip":"10.213.0.2","prefix":30,"gateway":"10.213.0.1"}}"#.to_vec();
        data.resize(4096, 0);
        let b = parse_config(&data).unwrap();
        assert_eq!(b.vm.gateway, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(b.guest.token, "t");
        assert!(
            parse_config(b"{\0")
                .unwrap_err()
                .contains("invalid boot config")
        );
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(30), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
    }
}
