//! Workspace images end to end: the default image built from its recipe (from scratch
//! when the cache is empty) into all three outputs, checked with independent tools
//! (e2fsck/debugfs for ext4, skopeo and our own digest check for OCI), a workspace started
//! on it running the agent CLIs, a recipe file with its own environment and service, and
//! the errors for bad recipes and unknown images.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::{Daemon, Out, run_bounded};

fn long(d: &Daemon, args: &[&str]) -> Out {
    run_bounded(&mut d.cmd(args), Duration::from_secs(40 * 60))
}

fn image_info(d: &Daemon, name: &str) -> serde_json::Value {
    let l: serde_json::Value = serde_json::from_str(&d.ok(&["image", "ls", "--json"])).unwrap();
    l["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("image {name} is not listed: {l}"))
        .clone()
}

fn output_path(info: &serde_json::Value, format: &str) -> String {
    info["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["format"] == format)
        .unwrap_or_else(|| panic!("no {format} output: {info}"))["path"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn tool(program: &str, args: &[&str]) -> String {
    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new(program);
    c.args(args);
    let o = run_bounded(&mut c, Duration::from_secs(300));
    assert_eq!(o.code, Some(0), "{program} {args:?}: {}", o.stderr);
    o.stdout
}

/// Every blob of an OCI layout has the digest it is named by, and the index → manifest →
/// config/layers chain is complete.
fn check_oci_layout(dir: &Path) -> serde_json::Value {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    assert_eq!(read(&dir.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    for e in std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            e.file_name().to_string_lossy(),
            "blob content matches its name"
        );
    }
    let blob = |d: &serde_json::Value| {
        dir.join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = read(&dir.join("index.json"));
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest = read(&blob(&m["digest"]));
    assert_eq!(
        std::fs::metadata(blob(&m["digest"])).unwrap().len(),
        m["size"].as_u64().unwrap()
    );
    let config = read(&blob(&manifest["config"]["digest"]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        config["rootfs"]["diff_ids"].as_array().unwrap().len()
    );
    for l in layers {
        assert_eq!(
            std::fs::metadata(blob(&l["digest"])).unwrap().len(),
            l["size"].as_u64().unwrap()
        );
    }
    config
}

#[test]
fn the_default_image_builds_into_three_outputs_and_runs_the_agent_clis() {
    let d = Daemon::start();

    // Built from the recipe (layers cached between runs; correct from an empty cache).
    let t0 = Instant::now();
    let o = long(&d, &["image", "build", "default"]);
    assert_eq!(
        o.code,
        Some(0),
        "build failed:\n{}\n{}\n{}",
        o.stdout,
        o.stderr,
        d.log_tail()
    );
    let first = t0.elapsed();
    for step in [
        "system packages (debootstrap)",
        "agent CLIs (npm)",
        "guest agent",
        "root file system",
        "ext4 disk image",
        "OCI image layout",
    ] {
        assert!(
            o.stderr.contains(step),
            "progress names {step:?}:\n{}",
            o.stderr
        );
    }
    assert!(o.stdout.contains("image default ("), "{}", o.stdout);
    eprintln!("default image: first build in {first:?}\n{}", o.stderr);

    // Unchanged recipe: every step is cached.
    let t1 = Instant::now();
    let o = long(&d, &["image", "build", "default"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let again = t1.elapsed();
    assert_eq!(
        o.stderr.matches(": cached").count(),
        6,
        "every step cached:\n{}",
        o.stderr
    );
    eprintln!("default image: unchanged rebuild in {again:?}");

    let info = image_info(&d, "default");
    assert_eq!(
        info["agents"],
        serde_json::json!(["claude", "codex", "gemini", "opencode", "qwen"])
    );
    let layers: Vec<&str> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        layers[0].starts_with("os-")
            && layers[1].starts_with("agents-")
            && layers[2].starts_with("guest-"),
        "{layers:?}"
    );

    // ext4: a valid file system holding the tree, checked without mounting it.
    let ext4 = output_path(&info, "ext4");
    tool("e2fsck", &["-fn", &ext4]);
    let ver = tool("debugfs", &["-R", "cat /etc/debian_version", &ext4]);
    assert!(ver.starts_with("12."), "bookworm inside: {ver:?}");
    let link = tool("debugfs", &["-R", "stat /usr/local/bin/claude", &ext4]);
    assert!(
        link.contains("Fast link dest") || link.contains("Type: symlink"),
        "{link}"
    );
    let guest = tool("debugfs", &["-R", "stat /.kraal/kraal-guest", &ext4]);
    let size: u64 = guest
        .split("Size: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(size > 100_000, "the guest agent is inside: {guest}");

    // OCI: structurally valid by our own check and by skopeo's.
    let oci = output_path(&info, "oci");
    let config = check_oci_layout(Path::new(&oci));
    assert_eq!(config["config"]["Entrypoint"][0], "/.kraal/kraal-guest");
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "LANG=C.UTF-8")
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", &format!("oci:{oci}:latest")])).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3, "{inspect}");
    assert_eq!(inspect["Architecture"], "amd64");

    // A workspace on it: the tools and the agent CLIs from the image itself.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("README.md"), "hi\n").unwrap();
    d.ok(&[
        "up",
        src.path().to_str().unwrap(),
        "--name",
        "img",
        "--image",
        "default",
    ]);
    assert_eq!(d.workspace("img")["image"], "default");
    let o = d.exec(
        "img",
        "set -e; claude --version; codex --version; git --version; node --version; python3 --version; rg --version | head -1; tmux -V; gcc --version | head -1; echo LANG=$LANG; test ! -e /etc/ssh/ssh_host_rsa_key && echo no-shared-host-keys",
    );
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
    for want in [
        "Claude Code",
        "codex-cli",
        "git version",
        "v22.",
        "Python 3.11",
        "ripgrep",
        "tmux",
        "gcc",
        "LANG=C.UTF-8",
        "no-shared-host-keys",
    ] {
        assert!(
            o.stdout.contains(want),
            "{want:?} missing in:\n{}",
            o.stdout
        );
    }
    // The agent CLIs are the image's, not a mount of the host's.
    let mounts = d.exec("img", "cat /proc/mounts");
    assert!(
        !mounts.stdout.contains("/opt/kraal/agents"),
        "{}",
        mounts.stdout
    );

    // In use: removal is refused, naming the workspace.
    let o = d.run(&["image", "rm", "default"]);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("is used by workspace"), "{}", o.stderr);
    d.ok(&["rm", "--yes", "img"]);
}

#[test]
fn a_recipe_file_adds_environment_and_services_and_bad_input_is_named() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // Same system packages as the base image, so its os layer is reused from the cache.
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(
        &recipe,
        r#"
name = "tiny-test"
description = "base plus an environment and a service"
packages = ["git", "ca-certificates", "procps", "less", "openssh-client"]
ports = [8080]
start = [["sh", "-c", "echo up > /tmp/service-started; exec sleep 100000"]]

[env]
TINY_IMAGE = "yes"
"#,
    )
    .unwrap();
    // The base image shares the os layer; built (or found) first so that removing
    // tiny-test below keeps that layer in the shared test cache.
    d.ok(&["image", "build", "base", "--output", "rootfs"]);
    let o = long(
        &d,
        &[
            "image",
            "build",
            "--file",
            recipe.to_str().unwrap(),
            "--output",
            "rootfs,oci",
        ],
    );
    assert_eq!(o.code, Some(0), "{}\n{}", o.stderr, d.log_tail());
    assert!(
        !o.stderr.contains("ext4"),
        "only the outputs asked for: {}",
        o.stderr
    );
    let info = image_info(&d, "tiny-test");
    let formats: Vec<&str> = info["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["rootfs", "oci"]);
    let config = check_oci_layout(Path::new(&output_path(&info, "oci")));
    assert!(
        config["config"]["ExposedPorts"]["8080/tcp"].is_object(),
        "{config}"
    );

    let src = tempfile::tempdir().unwrap();
    d.ok(&[
        "up",
        src.path().to_str().unwrap(),
        "--name",
        "tiny",
        "--image",
        "tiny-test",
    ]);
    let o = d.exec("tiny", "echo $TINY_IMAGE; for i in $(seq 50); do test -f /tmp/service-started && break; sleep 0.1; done; cat /tmp/service-started");
    assert_eq!(o.stdout, "yes\nup\n", "{}", o.stderr);
    let ps = d.ok(&["ps", "tiny"]);
    assert!(
        ps.contains("sleep 100000"),
        "the service is a listed process: {ps}"
    );
    // The base image carries no agents: the host's are mounted instead.
    let o = d.exec("tiny", "claude --version");
    assert_eq!(o.code, Some(0), "{}", o.stderr);

    let o = d.run(&["image", "rm", "tiny-test"]);
    assert!(o.stderr.contains("is used by workspace"), "{}", o.stderr);
    d.ok(&["rm", "--yes", "tiny"]);
    let removed = d.ok(&["image", "rm", "tiny-test"]);
    assert!(removed.contains("removed tiny-test-"), "{removed}");
    assert!(!Path::new(&output_path(&info, "rootfs")).exists());
    let o = d.run(&["image", "rm", "tiny-test"]);
    assert!(
        o.stderr.contains("no image named \"tiny-test\""),
        "{}",
        o.stderr
    );

    // Bad input: each error names what is wrong.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\npackages = [\"git\"]\nagent = [\"claude\"]\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["image", "build", "nope"],
            "no recipe named \"nope\" (built-in: base, default, desktop)",
        ),
        (
            vec!["image", "build", "--file", bad.to_str().unwrap()],
            "unknown field `agent`",
        ),
        (
            vec!["image", "build", "base", "--output", "qcow2"],
            "unknown image output \"qcow2\"",
        ),
        (
            vec!["image", "build", "--file", "/nonexistent.toml"],
            "cannot read recipe file /nonexistent.toml",
        ),
        (
            vec![
                "up",
                src.path().to_str().unwrap(),
                "--name",
                "x",
                "--image",
                "Bad_Name",
            ],
            "image name \"Bad_Name\"",
        ),
    ];
    for (args, want) in cases {
        let o = d.run(&args);
        assert_ne!(o.code, Some(0), "{args:?} should fail");
        assert!(
            o.stderr.contains(want),
            "{args:?}: want {want:?} in {}",
            o.stderr
        );
    }
    // An unknown image fails the workspace with the reason, not a hang.
    let o = d.run(&[
        "up",
        src.path().to_str().unwrap(),
        "--name",
        "noimg",
        "--image",
        "missing-image",
    ]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr.contains("no image named \"missing-image\""),
        "{}",
        o.stderr
    );
}
