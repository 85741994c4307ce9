//! Projects with a `devcontainer.json`, end to end: a local OCI registry (Debian's
//! `docker-registry` on loopback) holds an image and a feature this test pushes itself
//! (the image with skopeo, the feature with an OCI client); `kraal up` on the project
//! pulls and unpacks the image, installs the features in spec order inside gVisor, and
//! the workspace gets the environment, user, lifecycle commands and ports it asks for.
//! Dockerfile builds run their steps in sandboxes too. Bad files, unknown properties and
//! a failing feature are clear errors that leave nothing half-built behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::harness::{Daemon, run_bounded, wait_until};

/// `docker-registry` serving on a loopback port, storing in a temporary directory.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::harness::free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        #[allow(clippy::disallowed_methods)]
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry is installed (scripts/setup.sh with KRAAL_SETUP_TEST_DEPS=1)");
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "the registry answers", || {
            r.get("/v2/").starts_with("HTTP/1.1 200")
        });
        r
    }

    fn get(&self, path: &str) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes kraal's own `base` image (its OCI output) as `kraal/base:1`.
    fn push_base(&self, d: &Daemon) -> String {
        let o = run_bounded(
            &mut d.cmd(&["image", "build", "base", "--output", "rootfs,oci"]),
            Duration::from_secs(40 * 60),
        );
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let l: serde_json::Value = serde_json::from_str(&d.ok(&["image", "ls", "--json"])).unwrap();
        let base = l["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "base")
            .unwrap()
            .clone();
        let oci = base["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["format"] == "oci")
            .unwrap()["path"]
            .as_str()
            .unwrap()
            .to_owned();
        let reference = format!("{}/kraal/base:1", self.host());
        #[allow(clippy::disallowed_methods)]
        let mut c = Command::new("skopeo");
        c.args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{oci}:latest"))
            .arg(format!("docker://{reference}"));
        let o = run_bounded(&mut c, Duration::from_secs(600));
        assert_eq!(o.code, Some(0), "skopeo copy: {}", o.stderr);
        reference
    }

    /// Pushes a dev container feature (an OCI artifact with one tar layer) made of `files`.
    fn push_feature(&self, name: &str, files: &[(&str, &str)]) -> String {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append_data(&mut h, path, content.as_bytes()).unwrap();
        }
        let data = b.into_inner().unwrap();
        let reference = format!("{}/features/{name}:1", self.host());
        let r: oci_client::Reference = reference.parse().unwrap();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(client.push(
            &r,
            &[oci_client::client::ImageLayer::new(
                data,
                "application/vnd.devcontainers.layer.v1+tar".into(),
                None,
            )],
            oci_client::client::Config::new(
                b"{}".to_vec(),
                "application/vnd.devcontainers".into(),
                None,
            ),
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        ))
        .expect("feature pushed");
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
}

/// A value that changes every run, so no cache anywhere can stand in for a build step.
fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Scratch or partial directories builds left in an image store.
fn leftovers(store: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for dir in [store.to_owned(), store.join("layers")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".build-") {
                v.push(n);
            }
        }
    }
    v
}

/// A daemon with its own, empty image store: everything the dev container needs is built
/// (or pulled) from scratch, and what a failure leaves behind is visible.
fn private_store() -> (tempfile::TempDir, Daemon) {
    let store = tempfile::Builder::new()
        .prefix("kraal-dc-images-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = Daemon::start_with_env(&[("KRAAL_IMAGE_DIR", store.path().to_str().unwrap())]);
    (store, d)
}

fn dc_images(d: &Daemon, name: &str) -> usize {
    let l: serde_json::Value = serde_json::from_str(&d.ok(&["image", "ls", "--json"])).unwrap();
    l["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == name)
        .count()
}

/// `kraal up DIR --name NAME`, which must succeed.
fn up_project(d: &Daemon, root: &Path, name: &str) {
    let o = run_bounded(
        &mut d.cmd(&["up", root.to_str().unwrap(), "--name", name]),
        Duration::from_secs(20 * 60),
    );
    assert_eq!(
        o.code,
        Some(0),
        "{}\n{}\n{}",
        o.stdout,
        o.stderr,
        d.log_tail()
    );
}

/// Removes the workspaces, then their image, and checks no build left scratch behind.
fn remove_all(d: &Daemon, store: &Path, workspaces: &[&str], image: &str) {
    for w in workspaces {
        d.ok(&["rm", "--yes", w]);
    }
    d.ok(&["image", "rm", image]);
    assert!(leftovers(store).is_empty(), "{:?}", leftovers(store));
}

fn walk_names(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if e.file_name() == name {
                out.push(e.path());
            }
            if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_devcontainer_with_registry_image_and_features_shapes_the_workspace() {
    let reg = Registry::start();
    let base = reg.push_base(&Daemon::start());
    let (store, d) = private_store();
    let n = nonce();
    let greeter = reg.push_feature(
        "greeter",
        &[
            (
                "devcontainer-feature.json",
                r#"{
                    "id": "greeter", "version": "1.0.0", "name": "Greeter",
                    "options": {
                        "greeting": { "type": "string", "default": "hello", "proposals": ["hello", "ahoy"] },
                        "loud": { "type": "boolean", "default": false }
                    },
                    "containerEnv": { "GREETER_HOME": "/opt/greeter" }
                }"#,
            ),
            (
                "install.sh",
                &format!(
                    "#!/bin/sh\n# run {n}\nset -e\nmkdir -p /opt/greeter/bin\necho \"$GREETING loud=$LOUD for $_REMOTE_USER\" > /opt/greeter/greeting\nprintf '#!/bin/sh\\necho greeter-tool\\n' > /opt/greeter/bin/greet\nchmod +x /opt/greeter/bin/greet\necho greeter >> /opt/order.log\n"
                ),
            ),
        ],
    );

    let proj = tempfile::Builder::new().prefix("dcproj").tempdir().unwrap();
    let root = proj.path();
    write(root, "README.md", "hello\n");
    // A local feature, ordered after the registry one by installsAfter (sorted by name
    // alone it would come first), that also makes the remote user.
    write(
        root,
        ".devcontainer/local-tools/devcontainer-feature.json",
        &format!(
            r#"{{ "id": "local-tools", "version": "0.1.0", "installsAfter": ["{}"] }}"#,
            greeter.rsplit_once(':').unwrap().0
        ),
    );
    write(
        root,
        ".devcontainer/local-tools/install.sh",
        "#!/bin/sh\nset -e\ntest -f /opt/greeter/greeting\necho local >> /opt/order.log\nuseradd -m -s /bin/sh dev\n",
    );
    write(
        root,
        ".devcontainer/devcontainer.json",
        &format!(
            r#"// A project's dev container: comments and trailing commas are fine.
{{
  "name": "demo",
  "image": "{base}",
  "features": {{
    "{greeter}": {{ "greeting": "ahoy" }},
    "./local-tools": {{}},
  }},
  "containerEnv": {{ "PROJECT_MODE": "test" }},
  "remoteEnv": {{ "PATH": "${{containerEnv:PATH}}:/opt/greeter/bin", "WS": "${{containerWorkspaceFolder}}" }},
  "remoteUser": "dev",
  "postCreateCommand": "echo created >> /workspace/.created && id -un > /workspace/.whoami",
  "postStartCommand": ["sh", "-c", "echo started >> /workspace/.started"],
  "forwardPorts": [3000],
  "customizations": {{ "vscode": {{ "extensions": ["rust-lang.rust-analyzer"] }} }},
}}
"#
        ),
    );
    let name = format!(
        "dc-{}",
        root.file_name()
            .unwrap()
            .to_string_lossy()
            .to_ascii_lowercase()
    );

    let t0 = std::time::Instant::now();
    up_project(&d, root, "dc");
    let first = t0.elapsed();

    let o = d.exec(
        "dc",
        "cat /opt/greeter/greeting; cat /opt/order.log; id -un; echo mode=$PROJECT_MODE home=$GREETER_HOME ws=$WS; greet; stat -c %U /workspace/README.md; pwd",
    );
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
    assert_eq!(
        o.stdout,
        "ahoy loud=false for dev\ngreeter\nlocal\ndev\nmode=test home=/opt/greeter ws=/workspace\ngreeter-tool\ndev\n/workspace\n",
        "{}",
        o.stderr
    );
    // Lifecycle: the create command once, as the remote user; the start command per start.
    wait_until(
        Duration::from_secs(30),
        "postCreate and postStart ran",
        || d.exec("dc", "cat /workspace/.started").stdout == "started\n",
    );
    assert_eq!(
        d.exec("dc", "cat /workspace/.created /workspace/.whoami")
            .stdout,
        "created\ndev\n"
    );
    d.ok(&["down", "dc"]);
    d.ok(&["up", "dc"]);
    wait_until(Duration::from_secs(30), "postStart ran again", || {
        d.exec("dc", "cat /workspace/.started").stdout == "started\nstarted\n"
    });
    assert_eq!(
        d.exec("dc", "cat /workspace/.created").stdout,
        "created\n",
        "postCreate runs once"
    );
    // forwardPorts: a server in the workspace answers on the host's loopback.
    let ws = d.workspace("dc");
    assert_eq!(ws["ports"][0]["port"], 3000, "{ws}");
    let addr = ws["ports"][0]["address"].as_str().unwrap().to_owned();
    let o = d.exec(
        "dc",
        "nohup node -e \"require('http').createServer((q, r) => r.end('hi from ' + process.env.USER)).listen(3000)\" >/dev/null 2>&1 &",
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let mut answer = String::new();
    wait_until(
        Duration::from_secs(30),
        "the forwarded port answers",
        || {
            let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                return false;
            };
            let _ = write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n");
            answer.clear();
            let _ = s.read_to_string(&mut answer);
            answer.ends_with("hi from dev")
        },
    );
    // Sessions' agents are the host's, mounted into the pulled image.
    let o = d.exec("dc", "claude --version");
    assert_eq!(o.code, Some(0), "{}", o.stderr);

    // The image is listed with the forwarded port and the remote user.
    let l: serde_json::Value = serde_json::from_str(&d.ok(&["image", "ls", "--json"])).unwrap();
    let img = l["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {l}"))
        .clone();
    assert_eq!(img["description"], "from devcontainer.json (demo)", "{img}");

    // A second workspace of the same project reuses the image: nothing is rebuilt.
    let t0 = std::time::Instant::now();
    let o = run_bounded(
        &mut d.cmd(&["up", root.to_str().unwrap(), "--name", "dc2"]),
        Duration::from_secs(5 * 60),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    eprintln!(
        "first workspace (pull, 2 features, image): {:.1} s; second (cached image): {:.1} s",
        first.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(dc_images(&d, &name), 1);
    assert_eq!(
        d.exec("dc2", "cat /opt/greeter/greeting").stdout,
        "ahoy loud=false for dev\n"
    );

    remove_all(&d, store.path(), &["dc", "dc2"], &name);
}

#[test]
fn a_dockerfile_build_runs_its_steps_in_a_sandbox() {
    let reg = Registry::start();
    let base = reg.push_base(&Daemon::start());
    let (store, d) = private_store();
    let proj = tempfile::Builder::new().prefix("dfproj").tempdir().unwrap();
    let root = proj.path();
    write(root, ".devcontainer/hello.txt", "from the context\n");
    // A host directory the build's links point at: a step makes `/evil -> <it>` and the next
    // replaces it with a directory; a COPY source holds a link to a file in it and a later
    // source a file of the same name. The host directory must not change.
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("precious"), "keep").unwrap();
    std::fs::create_dir_all(root.join(".devcontainer/a")).unwrap();
    std::os::unix::fs::symlink(victim.path().join("pwn"), root.join(".devcontainer/a/f")).unwrap();
    write(root, ".devcontainer/f", "copied over the link\n");
    write(
        root,
        ".devcontainer/Dockerfile",
        &format!(
            r#"# run {}
ARG BASE
FROM ${{BASE}}
ARG GREETING=hello
ENV APP_HOME=/opt/app
WORKDIR $APP_HOME
COPY hello.txt ./
COPY hello.txt /bin/
RUN echo "$GREETING from RUN" > run.txt \
 && useradd -m builder \
 && rm -f /etc/motd
USER builder
RUN whoami > /home/builder/whoami
USER root
RUN ln -s {victim} /evil
RUN rm /evil && mkdir /evil && echo planted > /evil/planted
COPY a f /opt/copied/
USER builder
EXPOSE 8080
"#,
            nonce(),
            victim = victim.path().display()
        ),
    );
    write(
        root,
        ".devcontainer/devcontainer.json",
        &format!(
            r#"{{ "build": {{ "dockerfile": "Dockerfile", "args": {{ "BASE": "{base}", "GREETING": "hey" }} }} }}"#
        ),
    );
    up_project(&d, root, "df");
    let o = d.exec(
        "df",
        "cat /opt/app/hello.txt /opt/app/run.txt /home/builder/whoami; id -un; echo $APP_HOME; test -e /etc/motd && echo motd-still-there || echo motd-deleted",
    );
    assert_eq!(
        o.stdout, "from the context\nhey from RUN\nbuilder\nbuilder\n/opt/app\nmotd-deleted\n",
        "{}",
        o.stderr
    );
    let mut host_files: Vec<String> = std::fs::read_dir(victim.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_files.sort();
    assert_eq!(
        host_files,
        ["precious"],
        "the build changed a host directory"
    );
    let o = d.exec(
        "df",
        "test -d /evil && ! test -L /evil && cat /evil/planted /opt/copied/f /usr/bin/hello.txt && test -L /bin && echo bin-still-a-link",
    );
    assert_eq!(
        o.stdout, "planted\ncopied over the link\nfrom the context\nbin-still-a-link\n",
        "the steps' own results stay in the image: {}",
        o.stderr
    );
    let name = format!(
        "dc-{}",
        root.file_name()
            .unwrap()
            .to_string_lossy()
            .to_ascii_lowercase()
    );
    // The same project through `kraal image build --devcontainer`: the root file system is
    // the cached one, the OCI output (for Kubernetes) is added, with the Dockerfile's
    // environment, user and exposed port in its config.
    let o = run_bounded(
        &mut d.cmd(&[
            "image",
            "build",
            "--devcontainer",
            root.to_str().unwrap(),
            "--output",
            "rootfs,oci",
            "--json",
        ]),
        Duration::from_secs(10 * 60),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["progress"]["title"] == "root file system"
                && l["progress"]["detail"] == "cached"),
        "{}",
        o.stdout
    );
    let oci = lines.last().unwrap()["image"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["format"] == "oci")
        .unwrap_or_else(|| panic!("{}", o.stdout))["path"]
        .as_str()
        .unwrap()
        .to_owned();
    #[allow(clippy::disallowed_methods)]
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--config"])
        .arg(format!("oci:{oci}:latest"));
    let o = run_bounded(&mut c, Duration::from_secs(120));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let cfg: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        cfg["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "APP_HOME=/opt/app"),
        "{cfg}"
    );
    assert!(
        cfg["config"]["ExposedPorts"]["8080/tcp"].is_object(),
        "{cfg}"
    );
    let o = d.run(&["image", "build", "--devcontainer", "/nonexistent-project"]);
    assert!(
        o.stderr.contains("must be an existing absolute directory"),
        "{}",
        o.stderr
    );

    remove_all(&d, store.path(), &["df"], &name);
}

#[test]
fn bad_devcontainers_are_clear_errors_and_leave_nothing_behind() {
    let reg = Registry::start();
    let base = reg.push_base(&Daemon::start());
    let (store, d) = private_store();
    // (workspace name, devcontainer.json, other files, what the error must say)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "malformed",
            "{\n  \"image\": \"x\"\n  \"remoteUser\": \"dev\"\n}\n".into(),
            vec![],
            vec![
                ".devcontainer/devcontainer.json: invalid JSON at line 2",
                "comma",
            ],
        ),
        (
            "unknown",
            format!(r#"{{ "image": "{base}", "runArgs": ["--privileged"], "appPort": 80 }}"#),
            vec![],
            vec!["unsupported properties", "\"appPort\"", "\"runArgs\""],
        ),
        (
            "failing",
            format!(r#"{{ "image": "{base}", "features": {{ "./broken": {{}} }} }}"#),
            vec![
                (
                    ".devcontainer/broken/devcontainer-feature.json",
                    r#"{ "id": "broken", "version": "1.0.0" }"#.into(),
                ),
                (
                    ".devcontainer/broken/install.sh",
                    format!(
                        "#!/bin/sh\n# {}\necho about to fail\ntouch /half-installed\nexit 3\n",
                        nonce()
                    ),
                ),
            ],
            vec![
                "feature ./broken",
                "install.sh failed",
                "exit status: 3",
                "about to fail",
            ],
        ),
        (
            "missing-image",
            format!(r#"{{ "image": "{}/kraal/nope:1" }}"#, reg.host()),
            vec![],
            vec!["registry", "kraal/nope:1"],
        ),
    ];
    for (label, json, files, wants) in cases {
        let proj = tempfile::Builder::new()
            .prefix(&format!("bad{label}"))
            .tempdir()
            .unwrap();
        write(proj.path(), ".devcontainer/devcontainer.json", &json);
        for (p, c) in &files {
            write(proj.path(), p, c);
        }
        let o = run_bounded(
            &mut d.cmd(&["up", proj.path().to_str().unwrap(), "--name", label]),
            Duration::from_secs(10 * 60),
        );
        assert_ne!(o.code, Some(0), "{label}: {}", o.stdout);
        // Errors name the project's file, not the workspace volume's copy of it.
        assert!(!o.stderr.contains("/volume/"), "{label}: {}", o.stderr);
        let ws = d.workspace(label);
        let reason = ws["reason"].as_str().unwrap_or_default().to_owned();
        for w in wants {
            assert!(
                o.stderr.contains(w) || reason.contains(w),
                "{label}: {w:?} missing in:\n{}\nreason: {reason}",
                o.stderr
            );
        }
        let name = format!(
            "dc-{}",
            proj.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_ascii_lowercase()
        );
        assert_eq!(dc_images(&d, &name), 0, "{label}: no image");
        assert!(
            leftovers(store.path()).is_empty(),
            "{label}: {:?}",
            leftovers(store.path())
        );
        // The failed step's writes are nowhere in the store.
        let half: Vec<_> = walk_names(store.path(), "half-installed");
        assert!(half.is_empty(), "{label}: {half:?}");
        d.ok(&["rm", "--yes", label]);
    }
}
