//! Address allocation: a free /30 of the pool for a workspace's link, under a host-wide
//! lock, keeping a workspace's slot across restarts and never handing out one reserved
//! by a stopped persistent workspace of any daemon on the host.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kraal_core::WorkspaceId;

use crate::{NetError, Pool};

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

/// The slot workspace `id` (state under `state_dir`) was last given, if any.
pub fn recorded_slot(state_dir: &Path, id: &WorkspaceId) -> Option<u32> {
    std::fs::read_to_string(state_dir.join(id.as_str()).join("net-slot"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

pub async fn allocate_reserving(
    pool: Pool,
    state_dir: &Path,
    id: &WorkspaceId,
    reservations: &Path,
) -> Result<(u32, AllocGuard), NetError> {
    let own = state_dir.join(id.as_str());
    let previous = recorded_slot(state_dir, id);
    let mut reserved = HashSet::new();
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
    reserved: &HashSet<u32>,
    own_dev: Option<&str>,
) -> Result<(u32, AllocGuard), NetError> {
    let guard = host_lock().await?;
    let addrs = crate::netlink::host_addresses()
        .await
        .map_err(|source| NetError::Link {
            workspace: "(allocation)".into(),
            source,
        })?;
    let slot =
        pick_slot(&addrs, pool, preferred, reserved, own_dev).ok_or(NetError::Exhausted {
            pool: pool.to_string(),
        })?;
    Ok((slot, guard))
}

/// The slot to take given the host's IPv4 addresses (device, address): the one
/// `own_dev` already holds, else `preferred` when free, else the first free one;
/// `reserved` slots are never taken.
pub fn pick_slot(
    addrs: &[(String, Ipv4Addr)],
    pool: Pool,
    preferred: Option<u32>,
    reserved: &HashSet<u32>,
    own_dev: Option<&str>,
) -> Option<u32> {
    let own_slot = addrs
        .iter()
        .filter(|(dev, _)| own_dev == Some(dev.as_str()))
        .find_map(|(_, ip)| pool.slot_of(*ip));
    let mut used: HashSet<u32> = addrs
        .iter()
        .filter(|(dev, _)| own_dev != Some(dev.as_str()))
        .filter_map(|(_, ip)| pool.slot_of(*ip))
        .collect();
    used.extend(reserved);
    own_slot
        .or(preferred)
        .filter(|p| *p < pool.slots() && !used.contains(p))
        .into_iter()
        .chain(0..pool.slots())
        .find(|s| !used.contains(s))
}

/// The host-wide allocation lock (every daemon on the host allocates from one pool).
pub(crate) async fn host_lock() -> Result<AllocGuard, NetError> {
    let lock_path = PathBuf::from("/run/kraal/net.lock");
    tokio::task::spawn_blocking(move || -> Result<AllocGuard, NetError> {
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
    .expect("lock task does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_POOL;

    #[test]
    fn slots_prefer_the_own_link_then_the_last_one_and_skip_reserved() {
        let out = &[
            ("lo".to_owned(), Ipv4Addr::new(127, 0, 0, 1)),
            ("kh0000000001".to_owned(), Ipv4Addr::new(10, 213, 0, 1)),
            ("kh0000000002".to_owned(), Ipv4Addr::new(10, 213, 0, 9)),
            ("eth0".to_owned(), Ipv4Addr::new(192, 168, 1, 2)),
        ];
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
}
