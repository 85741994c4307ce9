//! Workspace networking on the host: one network namespace per workspace joined to the
//! host by a veth pair with a /30 from a private pool, and one nftables table that NATs
//! workspace traffic out, stops workspaces from reaching each other, and stops them from
//! opening connections to the host itself.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_core::WorkspaceId;
use kraal_sandbox::process::{Cmd, ProcessError};

/// Default pool for workspace links: 16 384 /30 subnets.
pub const DEFAULT_POOL: Pool = Pool {
    base: Ipv4Addr::new(10, 213, 0, 0),
    prefix: 16,
};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network setup for {workspace} failed")]
    Command {
        workspace: String,
        #[source]
        source: ProcessError,
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

    /// `ip` batch commands run in the root namespace.
    pub fn host_batch(&self) -> String {
        format!(
            "link add {h} type veth peer name {g} netns {ns}\naddr add {hip}/30 dev {h}\nlink set {h} up\n",
            h = self.host_if,
            g = self.guest_if,
            ns = self.netns,
            hip = self.host_ip
        )
    }

    /// `ip` batch commands creating the TAP device of a microVM in the root namespace.
    pub fn tap_batch(&self) -> String {
        format!(
            "tuntap add dev {h} mode tap\naddr add {hip}/30 dev {h}\nlink set {h} up\n",
            h = self.host_if,
            hip = self.host_ip
        )
    }

    /// `ip` batch commands run inside the workspace namespace.
    pub fn guest_batch(&self) -> String {
        format!(
            "link set lo up\naddr add {gip}/30 dev {g}\nlink set {g} up\nroute add default via {hip}\n",
            g = self.guest_if,
            gip = self.guest_ip,
            hip = self.host_ip
        )
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

/// Destinations image builds never reach: private, shared (CGNAT), loopback, link-local
/// (cloud metadata), multicast and reserved IPv4 ranges.
const BLOCKED_FOR_BUILDS: &str = "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, 192.168.0.0/16, 198.18.0.0/15, 224.0.0.0/3";

/// The whole kraal nftables table. Rules match interface names, so one static table
/// serves every workspace of every daemon on the host: `kh*` are workspace links (veth or
/// TAP), `kb*` the links of image build steps.
///
/// * Workspaces forward nothing: their only way out is the egress proxy on the host side
///   of their own link. `host_ports` are those host services (model gateway, egress
///   proxy); a workspace reaches them only at the host's address on its *own* link
///   (`fib daddr . iif type local`), never at another workspace's link address, and
///   nothing else on the host. Refused packets get an immediate error, not a hang.
/// * Build steps are NATed out (package installs), except to private, link-local and
///   metadata addresses; DNS is let through to whatever resolver the host uses.
/// * Nothing outside may open connections into either kind of link.
pub fn ruleset(pool: Pool, host_ports: &[u16]) -> String {
    let services = if host_ports.is_empty() {
        String::new()
    } else {
        let ports: Vec<String> = host_ports.iter().map(u16::to_string).collect();
        format!(
            "\t\tiifname \"kh*\" tcp dport {{ {} }} fib daddr . iif type local accept comment \"host services on the workspace's own link\"\n",
            ports.join(", ")
        )
    };
    format!(
        r#"table inet kraal
delete table inet kraal
table inet kraal {{
	set build_blocked {{
		type ipv4_addr; flags interval;
		elements = {{ {BLOCKED_FOR_BUILDS} }}
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname "kh*" reject with icmpx type admin-prohibited comment "workspaces reach outside only through their egress proxy"
		iifname "kb*" oifname {{ "kh*", "kb*" }} drop comment "builds never reach workspaces or each other"
		iifname "kb*" udp dport 53 accept comment "DNS for builds"
		iifname "kb*" tcp dport 53 accept
		iifname "kb*" ip daddr @build_blocked reject with icmpx type admin-prohibited comment "builds never reach private or metadata addresses"
		iifname "kb*" meta nfproto ipv6 drop
		oifname {{ "kh*", "kb*" }} ct state established,related accept
		oifname {{ "kh*", "kb*" }} drop comment "nothing outside may open connections into a sandbox"
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname {{ "kh*", "kb*" }} ct state established,related accept
{services}		iifname "kh*" reject with icmpx type admin-prohibited comment "workspaces cannot open connections to the host"
		iifname "kb*" drop comment "builds cannot open connections to the host"
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		iifname "kb*" ip saddr {pool} oifname != {{ "kh*", "kb*" }} masquerade
	}}
}}
"#
    )
}

pub async fn install_firewall(pool: Pool, host_ports: &[u16]) -> Result<(), NetError> {
    Cmd::new("nft")
        .args(["-f", "-"])
        .stdin(ruleset(pool, host_ports))
        .timeout(Duration::from_secs(30))
        .run()
        .await
        .map_err(NetError::Firewall)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetError::Forwarding)?;
    Ok(())
}

/// Holds the host-wide allocation lock; released on drop.
pub struct AllocGuard {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Picks a free /30 in `pool` by looking at the addresses configured on the host, under a
/// host-wide lock so that concurrent daemons (and concurrent creates) never collide. Keep
/// the guard until the link is configured.
pub async fn allocate(pool: Pool) -> Result<(u32, AllocGuard), NetError> {
    allocate_preferring(pool, None).await
}

/// Like [`allocate`], but takes `preferred` when it is in the pool and free (a workspace
/// keeps its address across restarts when it can).
pub async fn allocate_preferring(
    pool: Pool,
    preferred: Option<u32>,
) -> Result<(u32, AllocGuard), NetError> {
    allocate_with(pool, preferred, &Default::default(), None).await
}

/// Host-wide reservations of persistent workspaces' slots: one file per slot naming the
/// owner's state directory. Host-wide because every daemon on the host allocates from the
/// same pool.
pub const RESERVATIONS: &str = "/var/lib/kraal/net-reserved";

/// The slot of a workspace whose state lives in `state_dir/<id>/`: the one it holds now
/// (a restore keeps its link up), else the one it had last time when free (`net-slot`),
/// never one reserved by a *persistent* workspace of any daemon on this host (even a
/// stopped one). Records the slot, and reserves it when this workspace is persistent (a
/// `persistent` marker in its directory). Reservations whose owner is gone are dropped.
pub async fn allocate_for(
    pool: Pool,
    state_dir: &Path,
    id: &WorkspaceId,
) -> Result<(u32, AllocGuard), NetError> {
    allocate_reserving(pool, state_dir, id, Path::new(RESERVATIONS)).await
}

pub async fn allocate_reserving(
    pool: Pool,
    state_dir: &Path,
    id: &WorkspaceId,
    reservations: &Path,
) -> Result<(u32, AllocGuard), NetError> {
    let own = state_dir.join(id.as_str());
    let previous: Option<u32> = std::fs::read_to_string(own.join("net-slot"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut reserved = std::collections::HashSet::new();
    let mut mine = Vec::new();
    for e in std::fs::read_dir(reservations)
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(slot) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
        let owner = Path::new(owner.trim());
        if owner == own {
            mine.push(e.path());
        } else if owner.join("persistent").is_file() {
            reserved.insert(slot);
        } else {
            // Its workspace was removed or is no longer persistent.
            let _ = std::fs::remove_file(e.path());
        }
    }
    let dev = format!("kh{}", id.short());
    let r = allocate_with(pool, previous, &reserved, Some(&dev)).await?;
    let _ = std::fs::write(own.join("net-slot"), r.0.to_string());
    for p in mine {
        let _ = std::fs::remove_file(p);
    }
    if own.join("persistent").is_file() {
        let _ = std::fs::create_dir_all(reservations);
        let _ = std::fs::write(
            reservations.join(r.0.to_string()),
            own.to_string_lossy().as_bytes(),
        );
    }
    Ok(r)
}

async fn allocate_with(
    pool: Pool,
    preferred: Option<u32>,
    reserved: &std::collections::HashSet<u32>,
    own_dev: Option<&str>,
) -> Result<(u32, AllocGuard), NetError> {
    let lock_path = PathBuf::from("/run/kraal/net.lock");
    let guard = tokio::task::spawn_blocking(move || -> Result<AllocGuard, NetError> {
        std::fs::create_dir_all("/run/kraal").map_err(|e| NetError::Lock {
            path: lock_path.clone(),
            source: e,
        })?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| NetError::Lock {
                path: lock_path.clone(),
                source: e,
            })?;
        let lock =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                NetError::Lock {
                    path: lock_path.clone(),
                    source: e.into(),
                }
            })?;
        Ok(AllocGuard { _lock: lock })
    })
    .await
    .expect("lock task does not panic")?;
    let out = Cmd::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .run()
        .await
        .map_err(|e| NetError::Command {
            workspace: "(allocation)".into(),
            source: e,
        })?;
    let slot = pick_slot(&out.stdout_str(), pool, preferred, reserved, own_dev).ok_or(
        NetError::Exhausted {
            pool: pool.to_string(),
        },
    )?;
    Ok((slot, guard))
}

/// The slot to take given `ip -4 -o addr show` output: the one `own_dev` already holds,
/// else `preferred` when free, else the first free one; `reserved` slots are never taken.
pub fn pick_slot(
    ip_output: &str,
    pool: Pool,
    preferred: Option<u32>,
    reserved: &std::collections::HashSet<u32>,
    own_dev: Option<&str>,
) -> Option<u32> {
    let (own, others): (Vec<&str>, Vec<&str>) = ip_output
        .lines()
        .partition(|l| own_dev.is_some_and(|d| l.split_whitespace().nth(1) == Some(d)));
    let own_slot = used_slots(&own.join("\n"), pool).into_iter().next();
    let mut used = used_slots(&others.join("\n"), pool);
    used.extend(reserved);
    own_slot
        .or(preferred)
        .filter(|p| *p < pool.slots() && !used.contains(p))
        .into_iter()
        .chain(0..pool.slots())
        .find(|s| !used.contains(s))
}

/// Slots whose addresses appear in `ip -4 -o addr show` output.
pub fn used_slots(ip_output: &str, pool: Pool) -> std::collections::HashSet<u32> {
    ip_output
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            let cidr = it.next()?;
            cidr.split('/').next()?.parse::<Ipv4Addr>().ok()
        })
        .filter_map(|ip| pool.slot_of(ip))
        .collect()
}

/// Creates the namespace and link. Any leftover of an earlier attempt is removed first.
pub async fn setup(id: &WorkspaceId, link: &Link) -> Result<(), NetError> {
    teardown(id, link).await;
    let err = |e| NetError::Command {
        workspace: id.to_string(),
        source: e,
    };
    Cmd::new("ip")
        .args(["netns", "add", &link.netns])
        .run()
        .await
        .map_err(err)?;
    let r = async {
        Cmd::new("ip")
            .args(["-batch", "-"])
            .stdin(link.host_batch())
            .run()
            .await
            .map_err(err)?;
        Cmd::new("ip")
            .args(["-netns", &link.netns, "-batch", "-"])
            .stdin(link.guest_batch())
            .run()
            .await
            .map_err(err)?;
        Ok(())
    }
    .await;
    if r.is_err() {
        teardown(id, link).await;
    }
    r
}

/// Removes the namespace (which takes the veth pair with it). Never fails: missing pieces
/// are already gone.
pub async fn teardown(id: &WorkspaceId, link: &Link) {
    if netns_path(id).exists()
        && let Err(e) = Cmd::new("ip")
            .args(["netns", "del", &link.netns])
            .run()
            .await
    {
        tracing::warn!(workspace = %id, "removing network namespace: {e}");
    }
    let _ = Cmd::new("ip")
        .args(["link", "del", &link.host_if])
        .run()
        .await;
}

/// Creates a microVM's link: a persistent TAP device named like a veth host side (so the
/// same firewall rules cover it) holding the host address; the VM configures the guest
/// address itself. Any leftover device of an earlier start is replaced.
pub async fn setup_tap(id: &WorkspaceId, link: &Link) -> Result<(), NetError> {
    let _ = Cmd::new("ip")
        .args(["link", "del", &link.host_if])
        .run()
        .await;
    Cmd::new("ip")
        .args(["-batch", "-"])
        .stdin(link.tap_batch())
        .run()
        .await
        .map_err(|e| NetError::Command {
            workspace: id.to_string(),
            source: e,
        })?;
    Ok(())
}

/// The guest address of a live TAP link (the host address plus one).
pub async fn tap_guest_ip(id: &WorkspaceId) -> Option<Ipv4Addr> {
    let dev = format!("kh{}", id.short());
    let out = Cmd::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &dev])
        .run()
        .await
        .ok()?;
    let host: Ipv4Addr = out.stdout_str().lines().find_map(|l| {
        let mut it = l.split_whitespace();
        it.position(|w| w == "inet")?;
        it.next()?.split('/').next()?.parse().ok()
    })?;
    Some(Ipv4Addr::from(u32::from(host) + 1))
}

/// Removes a TAP link; missing is fine.
pub async fn teardown_tap(link: &Link) {
    let _ = Cmd::new("ip")
        .args(["link", "del", &link.host_if])
        .run()
        .await;
}

/// The guest address of a live link, read back from the namespace.
pub async fn guest_ip(id: &WorkspaceId) -> Option<Ipv4Addr> {
    if !netns_path(id).exists() {
        return None;
    }
    let ns = netns_name(id);
    let out = Cmd::new("ip")
        .args(["-netns", &ns, "-4", "-o", "addr", "show"])
        .run()
        .await
        .ok()?;
    out.stdout_str()
        .lines()
        .filter(|l| !l.contains(" lo "))
        .find_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next()?.parse().ok()
        })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn used_slots_parse_ip_output() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   5: kh1    inet 10.213.0.5/30 scope global kh1\\ valid_lft forever\n\
                   6: eth0    inet 192.168.1.2/24 brd 192.168.1.255 scope global eth0\n";
        let used = used_slots(out, DEFAULT_POOL);
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn slots_prefer_the_own_link_then_the_last_one_and_skip_reserved() {
        let out = "5: kh0000000001    inet 10.213.0.1/30 scope global kh0000000001\\ x\n\
                   6: kh0000000002    inet 10.213.0.9/30 scope global kh0000000002\\ x\n";
        let none = Default::default();
        // First free slot: 1 (slot 0 and 2 are used).
        assert_eq!(pick_slot(out, DEFAULT_POOL, None, &none, None), Some(1));
        // The device already holding slot 2 keeps it.
        assert_eq!(
            pick_slot(out, DEFAULT_POOL, Some(5), &none, Some("kh0000000002")),
            Some(2)
        );
        // A free preferred slot is taken, a used one is not.
        assert_eq!(pick_slot(out, DEFAULT_POOL, Some(5), &none, None), Some(5));
        assert_eq!(pick_slot(out, DEFAULT_POOL, Some(2), &none, None), Some(1));
        // Reserved slots (stopped persistent workspaces) are skipped.
        let reserved = [1, 5].into_iter().collect();
        assert_eq!(
            pick_slot(out, DEFAULT_POOL, Some(5), &reserved, None),
            Some(3)
        );
    }

    /// Two daemons (two state directories) on one host: a stopped persistent workspace's
    /// slot is not handed to the other daemon's workspace; once it is removed, it is.
    #[tokio::test]
    async fn persistent_reservations_hold_across_daemons_until_the_owner_is_gone() {
        // CI runs as root; a run without it fails here rather than passing untested.
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (the host-wide allocation lock)"
        );
        let d = tempfile::tempdir().unwrap();
        let (one, two, res) = (
            d.path().join("one"),
            d.path().join("two"),
            d.path().join("res"),
        );
        let a = WorkspaceId::random();
        let b = WorkspaceId::random();
        for (dir, id) in [(&one, &a), (&two, &b)] {
            std::fs::create_dir_all(dir.join(id.as_str())).unwrap();
        }
        std::fs::write(one.join(a.as_str()).join("persistent"), b"").unwrap();
        let (sa, g) = allocate_reserving(DEFAULT_POOL, &one, &a, &res)
            .await
            .unwrap();
        drop(g);
        assert_eq!(
            std::fs::read_to_string(res.join(sa.to_string())).unwrap(),
            one.join(a.as_str()).to_string_lossy()
        );
        // A never brought its link up (stopped): only the reservation protects its slot.
        let (sb, g) = allocate_reserving(DEFAULT_POOL, &two, &b, &res)
            .await
            .unwrap();
        drop(g);
        assert_ne!(sa, sb, "the persistent workspace's slot is not handed out");
        // Started again, A gets the same slot.
        let (again, g) = allocate_reserving(DEFAULT_POOL, &one, &a, &res)
            .await
            .unwrap();
        drop(g);
        assert_eq!(again, sa);
        // A removed: its reservation is dropped and the slot is free for others.
        std::fs::remove_dir_all(one.join(a.as_str())).unwrap();
        std::fs::remove_file(two.join(b.as_str()).join("net-slot")).unwrap();
        let (sb2, g) = allocate_reserving(DEFAULT_POOL, &two, &b, &res)
            .await
            .unwrap();
        drop(g);
        assert!(
            !res.join(sa.to_string()).exists(),
            "stale reservation removed"
        );
        assert!(
            sb2 <= sa,
            "the freed slot is available again ({sb2} vs {sa})"
        );
    }

    #[test]
    fn ruleset_golden() {
        let r = ruleset(DEFAULT_POOL, &[7072, 7073]);
        assert!(
            r.starts_with("table inet kraal\ndelete table inet kraal\n"),
            "must replace atomically"
        );
        let first_forward = r[r.find("chain forward").unwrap()..]
            .lines()
            .nth(2)
            .unwrap()
            .trim();
        assert!(
            first_forward.starts_with(r#"iifname "kh*" reject"#),
            "workspaces forward nothing at all: {first_forward}"
        );
        assert!(r.contains(
            r#"iifname "kh*" reject with icmpx type admin-prohibited comment "workspaces cannot open connections to the host""#
        ));
        assert!(r.contains(r#"iifname "kb*" ip daddr @build_blocked reject"#));
        assert!(r.contains("169.254.0.0/16") && r.contains("10.0.0.0/8"));
        assert!(r.contains(
            r#"iifname "kb*" ip saddr 10.213.0.0/16 oifname != { "kh*", "kb*" } masquerade"#
        ));
        assert!(
            !r.contains(r#"iifname "kh*" ip saddr"#),
            "workspaces are never NATed"
        );
        let services = r
            .find("tcp dport { 7072, 7073 } fib daddr . iif type local accept")
            .expect("host services rule");
        assert!(
            services
                < r.find("workspaces cannot open connections to the host")
                    .unwrap(),
            "the service rule comes before the drop"
        );
        assert!(!ruleset(DEFAULT_POOL, &[]).contains("fib daddr"));
    }

    /// The kernel's own parser checks the ruleset (`nft -c` changes nothing).
    #[tokio::test]
    async fn ruleset_is_accepted_by_nft() {
        assert!(
            kraal_sandbox::process::which("nft").is_some() && nix::unistd::geteuid().is_root(),
            "needs root and nft (installed by scripts/setup.sh)"
        );
        for ports in [&[][..], &[7072][..], &[7072, 7073][..]] {
            Cmd::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(ruleset(DEFAULT_POOL, ports))
                .run()
                .await
                .unwrap_or_else(|e| panic!("nft rejected the ruleset for {ports:?}: {e}"));
        }
    }

    #[test]
    fn batches_name_the_right_devices() {
        let id = WorkspaceId::parse("ws-00000000aa").unwrap();
        let l = Link::new(&id, DEFAULT_POOL, 0);
        assert_eq!(
            l.host_batch(),
            "link add kh00000000aa type veth peer name kg00000000aa netns kraal-00000000aa\naddr add 10.213.0.1/30 dev kh00000000aa\nlink set kh00000000aa up\n"
        );
        assert!(l.guest_batch().contains("route add default via 10.213.0.1"));
        assert_eq!(
            l.tap_batch(),
            "tuntap add dev kh00000000aa mode tap\naddr add 10.213.0.1/30 dev kh00000000aa\nlink set kh00000000aa up\n"
        );
    }
}
