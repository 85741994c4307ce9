//! Workspace networking on the host: one network namespace per workspace joined to the
//! host by a veth pair with a /30 from a private pool, and one nftables table that NATs
//! workspace traffic out, stops workspaces from reaching each other, and stops them from
//! opening connections to the host itself. Links and namespaces are made through
//! netlink and system calls ([`netlink`]); only the nftables table is loaded by `nft`,
//! and only when it is missing or different ([`firewall`]).

mod alloc;
mod firewall;
pub mod netlink;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kraal_core::WorkspaceId;
use kraal_sandbox::process::ProcessError;

pub use alloc::{
    AllocGuard, RESERVATIONS, allocate, allocate_for, allocate_preferring, allocate_reserving,
    pick_slot, recorded_slot,
};
pub use firewall::{install_firewall, ruleset};

/// Default pool for workspace links: 16 384 /30 subnets.
pub const DEFAULT_POOL: Pool = Pool {
    base: Ipv4Addr::new(10, 213, 0, 0),
    prefix: 16,
};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network setup for {workspace} failed")]
    Link {
        workspace: String,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the kraal nftables ruleset failed")]
    Firewall(#[source] ProcessError),
    #[error("the address pool {pool} is exhausted")]
    Exhausted { pool: String },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
}

/// An IPv4 pool carved into /30 links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Pool {
    pub fn slots(&self) -> u32 {
        1u32 << (32 - self.prefix as u32 - 2)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        (u32::from(ip) & mask) == (u32::from(self.base) & mask)
    }

    pub fn slot_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip)
            .then(|| (u32::from(ip) - u32::from(self.base)) / 4)
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The names and addresses of one workspace's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub netns: String,
    pub host_if: String,
    pub guest_if: String,
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
}

impl Link {
    /// Names derive from the workspace id; addresses from the slot.
    pub fn new(id: &WorkspaceId, pool: Pool, slot: u32) -> Link {
        let net = u32::from(pool.base) + slot * 4;
        Link {
            netns: netns_name(id),
            host_if: format!("kh{}", id.short()),
            guest_if: format!("kg{}", id.short()),
            host_ip: Ipv4Addr::from(net + 1),
            guest_ip: Ipv4Addr::from(net + 2),
        }
    }

    /// The link of an image build step: named `kb*`, which the firewall lets out through
    /// NAT (workspaces' `kh*` links are not).
    pub fn for_build(id: &WorkspaceId, pool: Pool, slot: u32) -> Link {
        let mut l = Link::new(id, pool, slot);
        l.host_if = format!("kb{}", id.short());
        l.guest_if = format!("kc{}", id.short());
        l
    }
}

/// The host's address on the link whose guest address is `guest` (links are /30s: the
/// host takes the first address, the guest the second).
pub fn host_ip_for(guest: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(guest) - 1)
}

pub fn netns_name(id: &WorkspaceId) -> String {
    format!("kraal-{}", id.short())
}

pub fn netns_path(id: &WorkspaceId) -> PathBuf {
    Path::new("/run/netns").join(netns_name(id))
}

/// Creates the namespace and link. Any leftover of an earlier attempt is removed first.
pub async fn setup(id: &WorkspaceId, link: &Link) -> Result<(), NetError> {
    teardown(id, link).await;
    let made = netlink::make_veth_link(
        netns_path(id),
        link.host_if.clone(),
        link.guest_if.clone(),
        link.host_ip,
        link.guest_ip,
    )
    .await;
    if let Err(source) = made {
        teardown(id, link).await;
        return Err(NetError::Link {
            workspace: id.to_string(),
            source,
        });
    }
    Ok(())
}

/// Removes the namespace (which takes the veth pair with it). Never fails: missing pieces
/// are already gone.
pub async fn teardown(id: &WorkspaceId, link: &Link) {
    if let Err(e) = netlink::delete_netns(&netns_path(id)) {
        tracing::warn!(workspace = %id, "removing network namespace: {e}");
    }
    // The host end goes with the namespace's end, at once; one left by a half-made
    // link (or a microVM's TAP of the same name) is removed here.
    if let Err(e) = netlink::delete_link(&link.host_if).await {
        tracing::warn!(workspace = %id, "removing {}: {e}", link.host_if);
    }
}

/// Creates a microVM's link: a persistent TAP device named like a veth host side (so the
/// same firewall rules cover it) holding the host address; the VM configures the guest
/// address itself. Any leftover device of an earlier start is replaced.
pub async fn setup_tap(id: &WorkspaceId, link: &Link) -> Result<(), NetError> {
    let err = |source| NetError::Link {
        workspace: id.to_string(),
        source,
    };
    netlink::delete_link(&link.host_if).await.map_err(err)?;
    netlink::make_tap(&link.host_if, link.host_ip)
        .await
        .map_err(err)
}

/// The guest address of a live TAP link (the host address plus one).
pub async fn tap_guest_ip(id: &WorkspaceId) -> Option<Ipv4Addr> {
    let dev = format!("kh{}", id.short());
    let host = netlink::host_addresses()
        .await
        .ok()?
        .into_iter()
        .find_map(|(d, ip)| (d == dev).then_some(ip))?;
    Some(Ipv4Addr::from(u32::from(host) + 1))
}

/// Removes a TAP link; missing is fine.
pub async fn teardown_tap(link: &Link) {
    if let Err(e) = netlink::delete_link(&link.host_if).await {
        tracing::warn!("removing {}: {e}", link.host_if);
    }
}

/// Gives the namespace's end of `link` its address and default route again (see
/// [`netlink::readdress_guest_end`]).
pub async fn readdress(id: &WorkspaceId, link: &Link) -> Result<(), NetError> {
    netlink::readdress_guest_end(
        netns_path(id),
        link.guest_if.clone(),
        link.guest_ip,
        link.host_ip,
    )
    .await
    .map_err(|source| NetError::Link {
        workspace: id.to_string(),
        source,
    })
}

/// The guest address of a live link, read back from the namespace.
pub async fn guest_ip(id: &WorkspaceId) -> Option<Ipv4Addr> {
    let path = netns_path(id);
    if !path.exists() {
        return None;
    }
    netlink::netns_addresses(path)
        .await
        .ok()?
        .into_iter()
        .find_map(|(dev, ip)| (dev != "lo").then_some(ip))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn links_fit_interface_name_limits_and_pool_math() {
        let id = WorkspaceId::parse("ws-0123456789").unwrap();
        let l = Link::new(&id, DEFAULT_POOL, 3);
        assert_eq!(l.host_if, "kh0123456789");
        assert!(l.host_if.len() <= 15 && l.guest_if.len() <= 15);
        assert_eq!(l.host_ip, Ipv4Addr::new(10, 213, 0, 13));
        assert_eq!(l.guest_ip, Ipv4Addr::new(10, 213, 0, 14));
        assert_eq!(host_ip_for(l.guest_ip), l.host_ip);
        assert_eq!(DEFAULT_POOL.slots(), 16384);
        let last = Link::new(&id, DEFAULT_POOL, 16383);
        assert_eq!(last.guest_ip, Ipv4Addr::new(10, 213, 255, 254));
        assert_eq!(DEFAULT_POOL.slot_of(Ipv4Addr::new(10, 213, 1, 1)), Some(64));
        assert_eq!(DEFAULT_POOL.slot_of(Ipv4Addr::new(10, 214, 0, 1)), None);
    }

    /// A link made through netlink, against the kernel: the namespace exists (where
    /// `ip netns` looks), each end holds its address, a listener inside is reached from
    /// the host, the default route points at the host; teardown leaves nothing. A TAP
    /// device likewise.
    #[tokio::test]
    async fn links_and_taps_are_made_and_removed_through_netlink() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (network namespaces)"
        );
        // A pool of its own, far from the default one, so other tests' links never clash.
        let pool = Pool {
            base: Ipv4Addr::new(10, 251, 0, 0),
            prefix: 16,
        };
        let id = WorkspaceId::random();
        let (slot, guard) = allocate(pool).await.unwrap();
        let link = Link::new(&id, pool, slot);
        setup(&id, &link).await.unwrap();
        drop(guard);
        assert!(netns_path(&id).exists());
        let listed = kraal_sandbox::process::Cmd::new("ip")
            .args(["netns", "list"])
            .run()
            .await
            .unwrap();
        assert!(
            listed.stdout_str().contains(&link.netns),
            "{}",
            listed.stdout_str()
        );
        assert_eq!(guest_ip(&id).await, Some(link.guest_ip));
        let host = netlink::host_addresses().await.unwrap();
        assert!(
            host.contains(&(link.host_if.clone(), link.host_ip)),
            "{host:?}"
        );
        let route = kraal_sandbox::process::Cmd::new("ip")
            .args(["-netns", &link.netns, "route", "show", "default"])
            .run()
            .await
            .unwrap();
        assert!(
            route.stdout_str().contains(&format!(
                "default via {} dev {}",
                link.host_ip, link.guest_if
            )),
            "{}",
            route.stdout_str()
        );

        // A command started in the namespace (setns between fork and exec) is in it.
        let inside = kraal_sandbox::process::Cmd::new("readlink")
            .arg("/proc/self/ns/net")
            .in_netns(netns_path(&id))
            .run()
            .await
            .unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(netns_path(&id)).unwrap());
        assert_eq!(inside.stdout_str().trim(), format!("net:[{ino}]"));

        // A listener inside the namespace, reached from the host over the veth pair.
        let ns = std::fs::File::open(netns_path(&id)).unwrap();
        let guest = link.guest_ip;
        let listener = std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind((guest, 0)).unwrap()
        })
        .join()
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = std::thread::spawn(move || {
            use std::io::Write;
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"inside").unwrap();
        });
        let mut got = String::new();
        let mut c = std::net::TcpStream::connect((guest, port)).unwrap();
        std::io::Read::read_to_string(&mut c, &mut got).unwrap();
        accept.join().unwrap();
        assert_eq!(got, "inside");

        teardown(&id, &link).await;
        assert!(!netns_path(&id).exists());
        assert_eq!(guest_ip(&id).await, None);
        let host = netlink::host_addresses().await.unwrap();
        assert!(!host.iter().any(|(d, _)| *d == link.host_if), "{host:?}");
        // Tearing down twice is fine.
        teardown(&id, &link).await;

        let tap_id = WorkspaceId::random();
        let (slot, guard) = allocate(pool).await.unwrap();
        let tap = Link::new(&tap_id, pool, slot);
        setup_tap(&tap_id, &tap).await.unwrap();
        drop(guard);
        assert_eq!(tap_guest_ip(&tap_id).await, Some(tap.guest_ip));
        let shown = kraal_sandbox::process::Cmd::new("ip")
            .args(["-d", "link", "show", "dev", &tap.host_if])
            .run()
            .await
            .unwrap();
        assert!(
            shown.stdout_str().contains("tun type tap"),
            "{}",
            shown.stdout_str()
        );
        // Made again over a leftover: replaced, not an error.
        setup_tap(&tap_id, &tap).await.unwrap();
        teardown_tap(&tap).await;
        assert_eq!(tap_guest_ip(&tap_id).await, None);
    }
}
