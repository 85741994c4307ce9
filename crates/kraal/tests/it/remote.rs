//! The real OpenSSH client into a workspace through the daemon: `ssh -F <kraal ssh-config>
//! WS git status`, scp both ways, `kraal ssh`; and `kraal forward` relaying a real
//! protocol (git daemon) from a workspace port to localhost. No port is opened on the
//! sandbox or the host for either.

use std::io::BufRead;
use std::process::{Command, Stdio};

use crate::harness::*;

/// Runs a host program with `HOME` pointing at the test's home; never hangs.
fn run_with_home(home: &std::path::Path, prog: &str, args: &[&str]) -> Out {
    #[allow(clippy::disallowed_methods)] // test harness: the real OpenSSH client
    let child = Command::new("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        code: child.status.code(),
        stdout: String::from_utf8_lossy(&child.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&child.stderr).into_owned(),
    }
}

#[test]
fn openssh_scp_and_port_forwarding_go_through_the_daemon() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "sshws");
    d.ok(&["up", repo.to_str().unwrap()]);
    let home = d.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cfg = home.join("kraal_ssh_config");

    // The generated config: one Host entry per workspace, proxied through the daemon.
    let o = d
        .cmd(&["ssh-config", "-o", cfg.to_str().unwrap()])
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("Host sshws sshws.kraal") && text.contains("ssh-proxy"),
        "{text}"
    );
    assert!(home.join(".config/kraal/ssh/id_ed25519").is_file());

    // ssh WS git status: runs in the checkout.
    let ssh_args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "-F".to_owned(),
            cfg.display().to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let args = ssh_args(&[
        "sshws",
        "git status --short --branch && pwd && echo $HTTPS_PROXY",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_with_home(&home, "ssh", &args);
    assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].starts_with("## "), "git status ran: {o:?}");
    assert_eq!(lines[1], "/workspace", "{o:?}");
    assert!(
        lines[2].starts_with("http://") && lines[2].ends_with(":7073"),
        "SSH sessions get the egress proxy: {o:?}"
    );
    // The host key was recorded on first use, under the workspace's id.
    let known = std::fs::read_to_string(home.join(".config/kraal/ssh/known_hosts")).unwrap();
    assert!(known.starts_with("kraal-ws-"), "{known}");

    // scp both ways (SFTP protocol), relative to the workspace.
    let local = d.dir.path().join("upload.txt");
    std::fs::write(&local, "sent by scp\n").unwrap();
    let args = ssh_args(&[local.to_str().unwrap(), "sshws:uploaded.txt"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_with_home(&home, "scp", &args);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        d.exec("sshws", "cat /workspace/uploaded.txt").stdout,
        "sent by scp\n"
    );
    let back = d.dir.path().join("back.md");
    let args = ssh_args(&["sshws:README.md", back.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_with_home(&home, "scp", &args);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "# demo\n");

    // `kraal ssh` runs the same client with its own config.
    let o = d
        .cmd(&[
            "ssh",
            "sshws",
            "--",
            "-o",
            "BatchMode=yes",
            "echo",
            "via-kraal-ssh",
        ])
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "via-kraal-ssh\n",
        "{o:?}"
    );

    // A wrong user and an image problem are clear errors, not hangs.
    let args = ssh_args(&["-l", "nobody-here", "sshws", "true"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_with_home(&home, "ssh", &args);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("there is no user nobody-here"), "{o:?}");

    // Port forwarding: a git daemon inside the workspace, reached from the host.
    let o = d.exec(
        "sshws",
        "git daemon --reuseaddr --base-path=/ --export-all --listen=0.0.0.0 --port=9418 --detach --pid-file=/tmp/gitd.pid && sleep 1 && echo started",
    );
    assert_eq!(o.stdout.trim(), "started", "{o:?}");
    let mut fwd = d
        .cmd(&["forward", "sshws", "9418", "--local", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(fwd.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first.trim().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{first:?}");
    let url = format!("git://{addr}/workspace");
    let o = run_with_home(&home, "git", &["ls-remote", &url]);
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("refs/heads/"), "{o:?}");
    // A port nothing listens on is an error at once.
    let o = d.run(&["forward", "sshws", "9", "--local", "127.0.0.1:0"]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr
            .contains("nothing listens on port 9 in workspace sshws"),
        "{o:?}"
    );

    // Audited.
    let audit: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["audit", "--json", "--limit", "200"])).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "ssh" && e["target"] == "sshws")
    );
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "forward" && e["detail"] == "port 9418")
    );
}
