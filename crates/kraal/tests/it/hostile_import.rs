//! `kraal import` of hostile files: an export whose volume part holds `..` and absolute
//! member names, a symlink and then a file written through it, a hard link to a host
//! file, device nodes, a setuid file and a 100 GiB sparse file. Each is imported on its
//! own. The volume is unpacked by GNU tar inside the new gVisor sandbox, so `..`, the
//! write through a symlink, the hard link to `/etc/passwd` and device nodes are refused
//! (a clear error, the half-made workspace removed); an absolute name lands inside the
//! volume, the setuid file stays setuid only inside the sandbox, and the sparse file costs
//! the host next to nothing. Either way nothing outside the new volume changes.

#![allow(clippy::disallowed_methods)] // test harness: GNU tar and zstd build the files

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// A tar header for `name` written raw, so `..` and absolute names survive (the tar
/// crate's own setters refuse them, as a careful writer would).
fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    let raw = &mut h.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let raw = &mut h.as_old_mut().linkname;
    raw[..target.len()].copy_from_slice(target.as_bytes());
}

/// One hostile member (or a few that work together), and, if the import unpacks it, a
/// check run inside the new workspace with what it must print.
struct Case {
    name: &'static str,
    members: Vec<(tar::Header, Vec<u8>)>,
    inside: Option<(String, String)>,
}

fn file(name: &str, body: &[u8], mode: u32) -> (tar::Header, Vec<u8>) {
    let mut h = header(name, tar::EntryType::Regular, body.len() as u64, mode);
    h.set_cksum();
    (h, body.to_vec())
}

fn link(name: &str, kind: tar::EntryType, target: &str) -> (tar::Header, Vec<u8>) {
    let mut h = header(name, kind, 0, 0o777);
    set_link(&mut h, target);
    h.set_cksum();
    (h, Vec::new())
}

fn device(name: &str, kind: tar::EntryType, major: u32, minor: u32) -> (tar::Header, Vec<u8>) {
    let mut h = header(name, kind, 0, 0o666);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    h.set_cksum();
    (h, Vec::new())
}

/// An old-GNU sparse member: `real` bytes long, only its last 512 written.
fn sparse(name: &str, real: u64) -> (tar::Header, Vec<u8>) {
    let mut h = header(name, tar::EntryType::GNUSparse, 512, 0o644);
    {
        let g = h.as_gnu_mut().unwrap();
        g.sparse[0].offset = octal(real - 512);
        g.sparse[0].numbytes = octal(512);
        g.realsize = octal(real);
    }
    h.set_cksum();
    (h, vec![b'z'; 512])
}

/// A numeric header field: octal when it fits, else GNU's base-256 (high bit set).
fn octal<const N: usize>(v: u64) -> [u8; N] {
    let s = format!("{v:0width$o}", width = N - 1);
    let mut out = [0u8; N];
    if s.len() < N {
        out[..N - 1].copy_from_slice(s.as_bytes());
    } else {
        out[0] = 0x80;
        let be = v.to_be_bytes();
        out[N - 8..].copy_from_slice(&be);
    }
    out
}

/// The export `head` (its description entry) followed by `members`, as a .tar.zst.
fn hostile_export(dir: &Path, head: &[u8], case: &Case) -> PathBuf {
    let tar_path = dir.join(format!("{}.tar", case.name));
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_path("kraal-export.json").unwrap();
    h.set_size(head.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, head).unwrap();
    for (h, body) in &case.members {
        b.append(h, body.as_slice()).unwrap();
    }
    b.into_inner().unwrap();
    let out = Command::new("zstd")
        .args(["-q", "-f", "--rm"])
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dir.join(format!("{}.tar.zst", case.name))
}

fn sha(path: &str) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn free_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

#[test]
fn hostile_imports_change_nothing_outside_the_new_volume() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "src");
    d.ok(&["up", repo.to_str().unwrap(), "--name", "src"]);
    let export = d.dir.path().join("src.tar.zst");
    d.ok(&["export", "src", "-o", export.to_str().unwrap()]);
    let head = Command::new("tar")
        .args([
            "--zstd",
            "-xOf",
            export.to_str().unwrap(),
            "kraal-export.json",
        ])
        .output()
        .unwrap();
    assert!(head.status.success(), "{head:?}");
    let head = head.stdout;

    // Host paths a hostile member aims at; none may appear or change.
    let tag = std::process::id();
    let canary = |what: &str| format!("/tmp/kraal-hostile-{what}-{tag}");
    let passwd = sha("/etc/passwd");
    let cases = vec![
        Case {
            name: "dotdot",
            members: vec![file(
                &format!("../../../../../..{}", canary("dotdot")),
                b"escaped",
                0o644,
            )],
            inside: None,
        },
        Case {
            name: "absolute",
            members: vec![file(&canary("absolute"), b"escaped", 0o644)],
            // GNU tar strips the leading `/`: the file lands in the volume.
            inside: Some((
                format!("cat /workspace{}", canary("absolute")),
                "escaped".into(),
            )),
        },
        Case {
            name: "symlink",
            members: vec![
                link("./escape", tar::EntryType::Symlink, "/tmp"),
                file(
                    &format!("./escape/kraal-hostile-link-{tag}"),
                    b"through the link",
                    0o644,
                ),
                link("./up", tar::EntryType::Symlink, "../../../../../../tmp"),
                file(
                    &format!("./up/kraal-hostile-up-{tag}"),
                    b"up and out",
                    0o644,
                ),
            ],
            inside: None,
        },
        Case {
            name: "hardlink",
            members: vec![
                link("./passwd", tar::EntryType::Link, "/etc/passwd"),
                file("./passwd", b"root::0:0::/:/bin/sh\n", 0o644),
            ],
            inside: None,
        },
        Case {
            name: "devices",
            members: vec![
                device("./mem", tar::EntryType::Char, 1, 1),
                device("./disk", tar::EntryType::Block, 8, 0),
            ],
            inside: None,
        },
        Case {
            name: "setuid",
            members: vec![file("./suid", b"#!/bin/sh\nid\n", 0o4755)],
            // Kept as the archive says, but only ever inside the sandbox.
            inside: Some(("stat -c %a /workspace/suid".into(), "4755".into())),
        },
        Case {
            name: "sparse",
            members: vec![sparse("./bomb", 100 << 30)],
            // 100 GiB long inside (what the host spends on it is checked below).
            inside: Some(("stat -c %s /workspace/bomb".into(), "107374182400".into())),
        },
    ];
    let data = d.data();
    let free_before = free_bytes(&data);
    for case in &cases {
        let file = hostile_export(d.dir.path(), &head, case);
        let ws = format!("hostile-{}", case.name);
        let o = d.run(&["import", file.to_str().unwrap(), "--as", &ws]);
        eprintln!("{}: exit {:?}: {}", case.name, o.code, o.stderr.trim());
        let names: Vec<String> = d
            .workspaces()
            .iter()
            .map(|w| w["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        if o.code == Some(0) {
            // Unpacked: it is there, inside the new workspace only.
            assert!(names.contains(&ws), "{}: {o:?}", case.name);
            let (script, want) = case.inside.as_ref().unwrap_or_else(|| {
                panic!(
                    "{}: imported, but this member must be refused: {o:?}",
                    case.name
                )
            });
            let got = d.exec(&ws, script);
            assert_eq!(got.stdout.trim(), want, "{}: {got:?}", case.name);
        } else {
            // Refused: a clear error, and the half-made workspace is gone.
            assert!(
                o.stderr
                    .contains("unpacking an export file failed (tar exited with 2)"),
                "{}: {o:?}",
                case.name
            );
            assert!(
                case.inside.is_none(),
                "{}: refused, but this one should unpack: {o:?}",
                case.name
            );
            assert!(!names.contains(&ws), "{}: {names:?}", case.name);
        }
        for what in ["dotdot", "absolute"] {
            assert!(
                !Path::new(&canary(what)).exists(),
                "{}: {} appeared on the host",
                case.name,
                canary(what)
            );
        }
        for what in ["link", "up"] {
            let p = format!("/tmp/kraal-hostile-{what}-{tag}");
            assert!(
                !Path::new(&p).exists(),
                "{}: {p} appeared on the host",
                case.name
            );
        }
        assert_eq!(
            sha("/etc/passwd"),
            passwd,
            "{}: /etc/passwd changed",
            case.name
        );
        // What the workspaces' files take on the host, while the new one still exists.
        let used = free_before.saturating_sub(free_bytes(&data));
        assert!(
            used < 1 << 30,
            "{}: the host's disk lost {} MiB",
            case.name,
            used >> 20
        );
        if o.code == Some(0) {
            let _ = d.run(&["rm", &ws, "--yes"]);
        }
    }
    // The daemon is fine afterwards: the source workspace still answers.
    let o = d.exec("src", "echo alive");
    assert_eq!(o.stdout, "alive\n", "{o:?}");
}
