//! Two workspaces cannot see each other's files or reach each other's network, and
//! neither can open connections to the host.

use crate::harness::*;

#[test]
fn workspaces_are_isolated_from_each_other_and_the_host() {
    let d = Daemon::start();
    let a = git_repo(d.dir.path(), "alpha");
    let b = git_repo(d.dir.path(), "beta");
    d.ok(&["up", a.to_str().unwrap()]);
    d.ok(&["up", b.to_str().unwrap()]);
    d.ok(&[
        "exec",
        "beta",
        "--",
        "sh",
        "-c",
        "echo secret > beta-only-marker-7f3a",
    ]);

    let a_addr = d.workspace("alpha")["address"].as_str().unwrap().to_owned();
    let b_addr = d.workspace("beta")["address"].as_str().unwrap().to_owned();
    assert_ne!(a_addr, b_addr);
    let (b_ip, port) = b_addr.split_once(':').unwrap();
    let (a_ip, _) = a_addr.split_once(':').unwrap();

    // Files: nothing of beta anywhere in alpha's view.
    let o = d.exec(
        "alpha",
        "find / -name 'beta-only-marker-*' 2>/dev/null | wc -l",
    );
    assert_eq!(o.stdout.trim(), "0", "{o:?}");
    let o = d.exec("beta", "ls beta-only-marker-7f3a");
    assert_eq!(o.code, Some(0), "the marker exists in beta: {o:?}");

    // Network: alpha cannot reach beta's guest agent, and beta cannot reach alpha's.
    let probe = |from: &str, ip: &str| {
        d.exec(
            from,
            &format!(
                "timeout 3 bash -c 'echo > /dev/tcp/{ip}/{port}' && echo CONNECTED || echo BLOCKED"
            ),
        )
    };
    assert_eq!(probe("alpha", b_ip).stdout.trim(), "BLOCKED");
    assert_eq!(probe("beta", a_ip).stdout.trim(), "BLOCKED");
    // A workspace can reach its own guest agent (sanity check of the probe itself).
    assert_eq!(probe("alpha", "127.0.0.1").stdout.trim(), "CONNECTED");

    // The host: a listener on the host side of alpha's link is not reachable.
    let host_ip = {
        let mut o: Vec<u8> = a_ip.split('.').map(|x| x.parse().unwrap()).collect();
        o[3] -= 1;
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
    };
    let listener = std::net::TcpListener::bind(format!("{host_ip}:18999")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let o = d.exec(
        "alpha",
        &format!(
            "timeout 3 bash -c 'echo > /dev/tcp/{host_ip}/18999' && echo CONNECTED || echo BLOCKED"
        ),
    );
    assert_eq!(o.stdout.trim(), "BLOCKED", "{o:?}");
    assert!(
        listener.accept().is_err(),
        "no connection arrived on the host"
    );
}
