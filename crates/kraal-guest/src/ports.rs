//! Listening TCP ports inside the sandbox, for dev-server previews: read from the
//! kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`; gVisor's sentry and a
//! microVM's kernel both keep them), with the listening process found through its socket
//! inode, and connections to the sandbox's own loopback for servers bound to `localhost`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kraal_protocol::{ErrorCode, GuestError, PortInfo};

/// TCP state `LISTEN` in the kernel's tables.
const LISTEN: &str = "0A";

/// One listening socket of a `/proc/net/tcp*` table: address, port, socket inode.
fn parse_table(text: &str) -> Vec<(IpAddr, u16, u64)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != LISTEN {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let (Some(ip), Ok(port)) = (parse_addr(addr), u16::from_str_radix(port, 16)) else {
            continue;
        };
        out.push((ip, port, f[9].parse().unwrap_or(0)));
    }
    out
}

/// The kernel prints each 32-bit word of an address as a native-endian integer in hex.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Socket inode → process name, from every process's file descriptors.
fn socket_owners() -> HashMap<u64, String> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
            {
                m.entry(inode).or_insert_with(|| comm.clone());
            }
        }
    }
    m
}

/// Every listening TCP port but `exclude` (the guest's own), in port order.
pub fn listening(exclude: &[u16]) -> Vec<PortInfo> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            sockets.extend(parse_table(&text));
        }
    }
    let owners = if sockets.is_empty() {
        HashMap::new()
    } else {
        socket_owners()
    };
    let mut by_port: BTreeMap<u16, PortInfo> = BTreeMap::new();
    for (ip, port, inode) in sockets {
        if port == 0 || exclude.contains(&port) {
            continue;
        }
        let p = by_port.entry(port).or_insert_with(|| PortInfo {
            port,
            addresses: Vec::new(),
            process: None,
        });
        let a = ip.to_string();
        if !p.addresses.contains(&a) {
            p.addresses.push(a);
        }
        if p.process.is_none() {
            p.process = owners.get(&inode).cloned().filter(|c| !c.is_empty());
        }
    }
    by_port.into_values().collect()
}

/// A connection to `port` on the sandbox's loopback (IPv4, then IPv6).
pub async fn connect_local(port: u16) -> Result<tokio::net::TcpStream, GuestError> {
    let mut last = None;
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("timed out".into()),
        }
    }
    Err(GuestError::new(
        ErrorCode::NotFound,
        format!(
            "nothing listens on port {port} in the workspace ({})",
            last.unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tables_are_read_as_addresses_ports_and_inodes() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0";
        let got = parse_table(v4);
        assert_eq!(
            got,
            vec![
                ("127.0.0.1".parse().unwrap(), 8080, 4242),
                ("0.0.0.0".parse().unwrap(), 22, 17)
            ],
            "established connections are not listeners"
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 100 0 0 10 0";
        let got = parse_table(v6);
        assert_eq!(got[0], ("::1".parse().unwrap(), 5432, 555));
        assert_eq!(got[1], ("::".parse().unwrap(), 3000, 556));
        assert!(parse_table("garbage\nmore garbage here").is_empty());
    }
}
