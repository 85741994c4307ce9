//! Links, addresses, routes, TAP devices and named network namespaces through netlink
//! and system calls — no `ip` processes on a workspace's start.
//!
//! Work inside a workspace's namespace runs on a thread of its own that joins the
//! namespace and then ends, so no thread of the daemon ever changes namespace.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Where named namespaces live (the same place as `ip netns`, which sees them).
pub const NETNS_DIR: &str = "/run/netns";

/// An error of step `what`, keeping the OS error kind.
fn step(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn nl(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// A route-netlink connection in the calling thread's network namespace (the socket
/// stays in it). Needs a Tokio runtime; the connection ends when the handle is dropped.
fn connect() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(step("netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `f` on a new thread with its own runtime, and waits for it. The thread may
/// change its namespace: it ends with `f`.
async fn on_own_thread<T, F, Fut>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kraal-netns".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .and_then(|rt| rt.block_on(f()));
            let _ = tx.send(r);
        })
        .map_err(step("starting the namespace thread"))?;
    rx.await
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Makes `/run/netns` a shared mount of its own, as `ip netns` does, so namespaces
/// mounted under it are seen by processes in other mount namespaces.
fn prepare_netns_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR).map_err(step(format!("creating {NETNS_DIR}")))?;
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            nix::mount::mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(io::Error::from)
            .map_err(step(format!("bind-mounting {NETNS_DIR}")))?;
            shared()
                .map_err(io::Error::from)
                .map_err(step(format!("sharing {NETNS_DIR}")))
        }
        Err(e) => Err(step(format!("sharing {NETNS_DIR}"))(e.into())),
    }
}

/// Moves the calling thread into a new network namespace and pins it at `path` (a bind
/// mount of the thread's namespace file), like `ip netns add`.
fn enter_new_named_netns(path: &Path) -> io::Result<()> {
    prepare_netns_dir()?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(step(format!("creating {}", path.display())))?;
    let pinned = nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(io::Error::from)
        .map_err(step("unshare(CLONE_NEWNET)"))
        .and_then(|()| {
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)
            .map_err(step(format!(
                "bind-mounting the namespace on {}",
                path.display()
            )))
        });
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// Moves the calling thread into the named namespace at `path`.
fn enter_netns(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path).map_err(step(format!("opening {}", path.display())))?;
    nix::sched::setns(f, CloneFlags::CLONE_NEWNET)
        .map_err(io::Error::from)
        .map_err(step(format!("joining {}", path.display())))
}

/// Removes a named namespace: its pin is detached and its file removed. The kernel
/// frees the namespace, and the veth ends inside it, once nothing else holds it.
pub fn delete_netns(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(step(format!("unmounting {}", path.display()))(e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(step(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The index of device `name` in the calling thread's namespace (`if_nametoindex`, an
/// ioctl: no link dump to parse). `None` when there is no such device.
fn index_of(name: &str) -> io::Result<Option<u32>> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "device name with NUL"))?;
    // SAFETY: a valid NUL-terminated string that lives across the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(step(format!("looking up {name}"))(e))
            }
        }
        i => Ok(Some(i)),
    }
}

fn must_index_of(name: &str) -> io::Result<u32> {
    index_of(name)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no device {name}")))
}

async fn add_address(h: &Handle, dev: &str, index: u32, ip: Ipv4Addr) -> io::Result<()> {
    h.address()
        .add(index, IpAddr::V4(ip), 30)
        .execute()
        .await
        .map_err(nl)
        .map_err(step(format!("adding {ip}/30 to {dev}")))
}

async fn set_up(h: &Handle, dev: &str, index: u32) -> io::Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl)
        .map_err(step(format!("bringing {dev} up")))
}

/// One workspace link, made whole or not at all by the caller: a new namespace at
/// `netns`, a veth pair whose `guest_if` end is inside it, `host_ip`/30 on the host end
/// and `guest_ip`/30 on the guest end, both up, `lo` up, and the default route via the
/// host.
pub async fn make_veth_link(
    netns: PathBuf,
    host_if: String,
    guest_if: String,
    host_ip: Ipv4Addr,
    guest_ip: Ipv4Addr,
) -> io::Result<()> {
    on_own_thread(move || async move {
        // Device indexes are looked up in the thread's namespace: the thread makes the
        // new namespace, goes back to the host's for the host end, then into the new one.
        let host_ns = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(step("opening the host's namespace"))?;
        enter_new_named_netns(&netns)?;
        let inside = connect()?;
        nix::sched::setns(&host_ns, CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .map_err(step("returning to the host's namespace"))?;
        let host = connect()?;
        let ns = std::fs::File::open(&netns).map_err(step("opening the new namespace"))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(guest_if.clone())
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let veth = LinkVeth::new(&host_if, &guest_if)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(nl)
            .map_err(step(format!("creating veth {host_if}")))?;
        let h = must_index_of(&host_if)?;
        add_address(&host, &host_if, h, host_ip).await?;
        set_up(&host, &host_if, h).await?;

        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .map_err(step("joining the new namespace"))?;
        let lo = must_index_of("lo")?;
        set_up(&inside, "lo", lo).await?;
        address_inside(&inside, &guest_if, guest_ip, host_ip, false).await
    })
    .await
}

/// Gives the namespace's end `guest_if` its address, brings it up and routes by default
/// via `host_ip` — from the thread already in the namespace, whose handle is `inside`.
/// With `keep_existing`, an address or route already there is fine.
async fn address_inside(
    inside: &Handle,
    guest_if: &str,
    guest_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    keep_existing: bool,
) -> io::Result<()> {
    let kept = |r: io::Result<()>| match r {
        Err(e) if keep_existing && e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    };
    let g = must_index_of(guest_if)?;
    kept(add_address(inside, guest_if, g, guest_ip).await)?;
    set_up(inside, guest_if, g).await?;
    kept(
        inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(host_ip)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl)
            .map_err(step(format!("adding the default route via {host_ip}"))),
    )
}

/// Gives the namespace's end of a link its address and default route again: gVisor's own
/// netstack takes them over when a sandbox starts, so a sandbox restored from a checkpoint
/// into the same namespace needs them back. An address still there is kept.
pub async fn readdress_guest_end(
    netns: PathBuf,
    guest_if: String,
    guest_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
) -> io::Result<()> {
    on_own_thread(move || async move {
        let ns = std::fs::File::open(&netns).map_err(step("opening the namespace"))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .map_err(step("joining the namespace"))?;
        let inside = connect()?;
        address_inside(&inside, &guest_if, guest_ip, host_ip, true).await
    })
    .await
}

/// Removes the device `name` of the host's namespace; a missing one is fine.
pub async fn delete_link(name: &str) -> io::Result<()> {
    let h = connect()?;
    let Some(index) = index_of(name)? else {
        return Ok(());
    };
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(()),
        Err(e) => Err(step(format!("removing {name}"))(nl(e))),
    }
}

/// A persistent TAP device `name` in the host's namespace (TUNSETIFF + TUNSETPERSIST on
/// `/dev/net/tun`, as `ip tuntap add`) with `host_ip`/30, up.
pub async fn make_tap(name: &str, host_ip: Ipv4Addr) -> io::Result<()> {
    create_persistent_tap(name)?;
    let h = connect()?;
    let index = must_index_of(name)?;
    add_address(&h, name, index, host_ip).await?;
    set_up(&h, name, index).await
}

fn create_persistent_tap(name: &str) -> io::Result<()> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(step("opening /dev/net/tun"))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device name {name} is too long"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(step(format!("TUNSETIFF {name}"))(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(step(format!("TUNSETPERSIST {name}"))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The IPv4 addresses of the calling thread's namespace with the device each is on.
async fn addresses(h: &Handle) -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut out = Vec::new();
    let mut names = std::collections::HashMap::new();
    let mut msgs = h.address().get().execute();
    while let Some(m) = msgs
        .try_next()
        .await
        .map_err(nl)
        .map_err(step("listing addresses"))?
    {
        if m.header.family != AddressFamily::Inet {
            continue;
        }
        let mut ip = None;
        let mut label = None;
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(IpAddr::V4(v)) => ip = Some(*v),
                AddressAttribute::Address(IpAddr::V4(v)) if ip.is_none() => ip = Some(*v),
                AddressAttribute::Label(l) => label = Some(l.clone()),
                _ => {}
            }
        }
        let Some(ip) = ip else { continue };
        let dev = match label {
            Some(l) => l,
            None => names
                .entry(m.header.index)
                .or_insert_with(|| format!("if{}", m.header.index))
                .clone(),
        };
        out.push((dev, ip));
    }
    Ok(out)
}

/// The IPv4 addresses of the host's namespace, with their devices.
pub async fn host_addresses() -> io::Result<Vec<(String, Ipv4Addr)>> {
    addresses(&connect()?).await
}

/// The IPv4 addresses inside the named namespace at `path`, with their devices.
pub async fn netns_addresses(path: PathBuf) -> io::Result<Vec<(String, Ipv4Addr)>> {
    on_own_thread(move || async move {
        enter_netns(&path)?;
        addresses(&connect()?).await
    })
    .await
}
