//! The kraal nftables table: one static ruleset for every workspace and build link on
//! the host, installed when missing or different and otherwise only checked (a single
//! netlink query, no `nft` process on a workspace's start).

use std::time::Duration;

use kraal_sandbox::process::Cmd;

use crate::{NetError, Pool};

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
    let table = format!(
        r#"	set build_blocked {{
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
"#
    );
    format!(
        "table inet kraal\ndelete table inet kraal\ntable inet kraal {{\n\tcomment \"{}\"\n{table}}}\n",
        marker(&table)
    )
}

/// The table's comment: a digest of its rules, so an installed table is known to be
/// this very ruleset without listing it.
fn marker(table: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(table.as_bytes());
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{MARKER_PREFIX}{hex}")
}

const MARKER_PREFIX: &str = "kraal ruleset ";

/// Makes sure the host runs [`ruleset`]: one netlink query when the table in place
/// already is this ruleset (the workspace start path), `nft -f` only when it is missing
/// or differs — another version's table, or one an administrator flushed. Also turns on
/// IPv4 forwarding.
pub async fn install_firewall(pool: Pool, host_ports: &[u16]) -> Result<(), NetError> {
    ensure_table("kraal", &ruleset(pool, host_ports)).await?;
    let forwarding = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(forwarding)
        .map(|s| s.trim() != "1")
        .unwrap_or(true)
    {
        std::fs::write(forwarding, "1").map_err(NetError::Forwarding)?;
    }
    Ok(())
}

/// Loads `rules` (a script that replaces table `inet <name>`, whose comment is its
/// marker) unless the table in place carries that marker. Whether it loaded them.
async fn ensure_table(name: &str, rules: &str) -> Result<bool, NetError> {
    let want = rules
        .lines()
        .find_map(|l| l.trim().strip_prefix("comment \""))
        .and_then(|c| c.strip_suffix('"'))
        .expect("the ruleset carries its marker")
        .to_owned();
    let table = name.to_owned();
    let installed = tokio::task::spawn_blocking(move || installed_table(&table))
        .await
        .expect("netlink query does not panic");
    let current = match installed {
        Ok(Some(t)) => memchr::memmem::find(&t, want.as_bytes()).is_some(),
        Ok(None) => false,
        Err(e) => {
            tracing::debug!("reading nftables table inet {name}: {e}; loading it");
            false
        }
    };
    if current {
        return Ok(false);
    }
    Cmd::new("nft")
        .args(["-f", "-"])
        .stdin(rules.to_owned())
        .timeout(Duration::from_secs(30))
        .run()
        .await
        .map_err(NetError::Firewall)?;
    Ok(true)
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

/// The netlink message describing table `inet <name>` as the kernel holds it (its
/// comment is in there), or `None` when there is no such table.
fn installed_table(name: &str) -> std::io::Result<Option<Vec<u8>>> {
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    s.send(&get_table_request(name.as_bytes()), 0)?;
    let (reply, _) = s.recv_from_full()?;
    parse_table_reply(&reply)
}

/// NFT_MSG_GETTABLE for `inet <name>`: netlink header, nfgenmsg, the name attribute.
fn get_table_request(name: &[u8]) -> Vec<u8> {
    let attr_len = 4 + name.len() + 1;
    let padded = (attr_len + 3) & !3;
    let total = 16 + 4 + padded;
    let mut m = Vec::with_capacity(total);
    m.extend((total as u32).to_ne_bytes());
    m.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    m.extend(NLM_F_REQUEST.to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // sequence
    m.extend(0u32.to_ne_bytes()); // port: the kernel
    m.extend([NFPROTO_INET, 0]);
    m.extend(0u16.to_be_bytes());
    m.extend((attr_len as u16).to_ne_bytes());
    m.extend(NFTA_TABLE_NAME.to_ne_bytes());
    m.extend(name);
    m.resize(total, 0);
    m
}

/// The kernel's answer to [`get_table_request`]: the table message, `None` for
/// ENOENT, an error for anything else.
fn parse_table_reply(reply: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let bad = || std::io::Error::other("malformed nftables netlink reply");
    if reply.len() < 16 {
        return Err(bad());
    }
    let len = u32::from_ne_bytes(reply[0..4].try_into().unwrap()) as usize;
    let kind = u16::from_ne_bytes(reply[4..6].try_into().unwrap());
    if len < 16 || len > reply.len() {
        return Err(bad());
    }
    if kind == NLMSG_ERROR {
        if len < 20 {
            return Err(bad());
        }
        let code = i32::from_ne_bytes(reply[16..20].try_into().unwrap());
        return match -code {
            0 => Err(bad()),
            libc::ENOENT => Ok(None),
            e => Err(std::io::Error::from_raw_os_error(e)),
        };
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
        return Err(bad());
    }
    Ok(Some(reply[16..len].to_vec()))
}

#[cfg(test)]
mod tests {
    use kraal_sandbox::process::Cmd;

    use super::*;
    use crate::DEFAULT_POOL;

    #[test]
    fn ruleset_golden() {
        let r = ruleset(DEFAULT_POOL, &[7072, 7073]);
        assert!(
            r.starts_with("table inet kraal\ndelete table inet kraal\ntable inet kraal {\n\tcomment \"kraal ruleset "),
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

    /// The marker changes with the rules and only with them.
    #[test]
    fn rulesets_differ_in_their_marker_exactly_when_their_rules_do() {
        let m = |ports: &[u16]| {
            ruleset(DEFAULT_POOL, ports)
                .lines()
                .find(|l| l.contains("comment \"kraal ruleset "))
                .unwrap()
                .to_owned()
        };
        assert_eq!(m(&[7072]), m(&[7072]));
        assert_ne!(m(&[7072]), m(&[7072, 7073]));
        assert_ne!(m(&[]), m(&[7072]));
    }

    #[test]
    fn table_replies_are_read_and_bad_ones_refused() {
        let req = get_table_request(b"kraal");
        assert_eq!(req.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        let mut enoent = vec![0u8; 36];
        enoent[0..4].copy_from_slice(&36u32.to_ne_bytes());
        enoent[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        enoent[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_table_reply(&enoent).unwrap(), None);
        enoent[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_table_reply(&enoent).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(parse_table_reply(&[0u8; 7]).is_err());
        let mut short = enoent.clone();
        short[0..4].copy_from_slice(&999u32.to_ne_bytes());
        assert!(parse_table_reply(&short).is_err());
    }

    /// Against the kernel, on a table of its own without hooks (so workspaces of tests
    /// running beside it are untouched): loaded when missing, only checked while in place
    /// (a chain added by hand survives), reloaded when its marker differs.
    #[tokio::test]
    async fn a_table_is_loaded_when_missing_or_different_and_only_checked_otherwise() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (nftables)");
        let name = format!("kraaltest{}", std::process::id());
        let script = |marker: &str| {
            format!(
                "table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n\tcomment \"{marker}\"\n\tset s {{ type ipv4_addr; }}\n}}\n"
            )
        };
        let exists = |what: &str| {
            let what = what.to_owned();
            async move { Cmd::new("nft").args(what.split(' ')).run().await.is_ok() }
        };
        assert!(
            ensure_table(&name, &script("kraal ruleset aa"))
                .await
                .unwrap()
        );
        assert!(
            !ensure_table(&name, &script("kraal ruleset aa"))
                .await
                .unwrap()
        );
        Cmd::new("nft")
            .args(["add", "chain", "inet", &name, "probe"])
            .run()
            .await
            .unwrap();
        assert!(
            !ensure_table(&name, &script("kraal ruleset aa"))
                .await
                .unwrap()
        );
        assert!(
            exists(&format!("list chain inet {name} probe")).await,
            "not reloaded"
        );
        assert!(
            ensure_table(&name, &script("kraal ruleset bb"))
                .await
                .unwrap()
        );
        assert!(
            !exists(&format!("list chain inet {name} probe")).await,
            "reloaded"
        );
        Cmd::new("nft")
            .args(["delete", "table", "inet", &name])
            .run()
            .await
            .unwrap();
        assert_eq!(installed_table(&name).unwrap(), None);
        assert!(
            ensure_table(&name, &script("kraal ruleset bb"))
                .await
                .unwrap()
        );
        assert!(installed_table(&name).unwrap().is_some());
        Cmd::new("nft")
            .args(["delete", "table", "inet", &name])
            .run()
            .await
            .unwrap();
    }
}
