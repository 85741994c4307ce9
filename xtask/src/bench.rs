//! `cargo xtask bench`: workspace create→first-exec latency and concurrent creates, each
//! measured in the same run next to its raw baseline, `runsc run` of a bundle on the same
//! root file system (no kraal, no network namespace, no overlay, no guest agent).

#![allow(clippy::disallowed_methods)] // Automation: spawns cargo, runsc and kraal directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::root;

struct Opts {
    iterations: usize,
    concurrent: usize,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        iterations: 5,
        concurrent: 20,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = || -> anyhow::Result<usize> {
            Ok(it.clone().next().context("missing value")?.parse()?)
        };
        match a.as_str() {
            "--iterations" => o.iterations = v()?,
            "--concurrent" => o.concurrent = v()?,
            other => bail!("unknown bench option {other}"),
        }
        it.next();
    }
    Ok(o)
}

pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len().max(1);
    let mean = v.iter().sum::<f64>() / n as f64;
    let p = |q: f64| v[((q * (n as f64 - 1.0)).round() as usize).min(n - 1)];
    json!({ "n": v.len(), "mean_ms": mean, "p50_ms": p(0.5), "p95_ms": p(0.95), "min_ms": v[0], "max_ms": v[n - 1] })
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) struct Daemon {
    child: std::process::Child,
    pub socket: PathBuf,
    pub data: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn kraal(&self, kraal: &Path) -> Command {
        let mut c = Command::new(kraal);
        c.env("KRAAL_SOCKET", &self.socket).stdin(Stdio::null());
        c
    }
}

/// A release build, a daemon on a private data dir and socket, and a small git repo.
pub(crate) struct Setup {
    pub d: Daemon,
    pub kraal: PathBuf,
    pub images: String,
    pub tmp: tempfile::TempDir,
    pub repo: PathBuf,
}

pub(crate) fn setup(env: &[(&str, &str)]) -> anyhow::Result<Setup> {
    let root = root();
    println!("building release binaries…");
    sh(Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "kraal"])
        .current_dir(&root))?;
    sh(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "kraal-guest",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .current_dir(&root))?;
    let kraal = root.join("target/release/kraal");
    let guest = root.join("target/x86_64-unknown-linux-musl/release/kraal-guest");
    let images =
        std::env::var("KRAAL_IMAGE_DIR").unwrap_or_else(|_| "/var/tmp/kraal-test-images".into());

    let tmp = tempfile::Builder::new().prefix("kraal-bench-").tempdir()?;
    let data = tmp.path().join("data");
    let socket = tmp.path().join("kraal.sock");
    let log = std::fs::File::create(tmp.path().join("daemon.log"))?;
    let child = Command::new(&kraal)
        .args(["serve", "--listen", "none"])
        .env("KRAAL_DATA_DIR", &data)
        .env("KRAAL_SOCKET", &socket)
        .env("KRAAL_IMAGE_DIR", &images)
        .env("KRAAL_IMAGE", "base")
        .env("KRAAL_GUEST_BIN", &guest)
        .envs(env.iter().copied())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let d = Daemon {
        child,
        socket: socket.clone(),
        data: data.clone(),
    };
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "daemon did not start; see {}",
                tmp.path().join("daemon.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // A small git repository as the source.
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    std::fs::write(repo.join("README.md"), "bench\n")?;
    for args in [
        vec!["init", "-q"],
        vec!["add", "."],
        vec![
            "-c",
            "user.email=b@x",
            "-c",
            "user.name=b",
            "commit",
            "-qm",
            "x",
        ],
    ] {
        sh(Command::new("git").args(&args).current_dir(&repo))?;
    }
    Ok(Setup {
        d,
        kraal,
        images,
        tmp,
        repo,
    })
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    let root = root();
    let Setup {
        d,
        kraal,
        images,
        tmp,
        repo,
    } = setup(&[])?;
    let socket = d.socket.clone();
    // Warm-up: builds the base image when the cache is empty, warms page caches.
    println!("warming up (builds the base image on first use)…");
    sh(d.kraal(&kraal)
        .args(["up", repo.to_str().unwrap(), "--name", "warmup"]))?;
    sh(d.kraal(&kraal).args(["exec", "warmup", "--", "true"]))?;
    sh(d.kraal(&kraal).args(["rm", "--yes", "warmup"]))?;
    let rootfs = std::fs::read_dir(&images)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.join("complete").is_file()
                && p.join("image.json").is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("base-"))
        })
        .context("base image not found")?
        .join("rootfs");

    // Baseline bundle: the same root file system, read-only, running /bin/true.
    let bundle = tmp.path().join("raw-bundle");
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&json!({
            "ociVersion": "1.0.2",
            "root": { "path": rootfs, "readonly": true },
            "process": { "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "env": ["PATH=/usr/bin:/bin"], "cwd": "/" },
            "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
            "linux": { "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}] }
        }))?,
    )?;
    let raw_root = tmp.path().join("raw-runsc");
    let raw_run = |id: &str| -> anyhow::Result<Duration> {
        let t = Instant::now();
        sh(Command::new("runsc")
            .arg(format!("--root={}", raw_root.display()))
            .args(["--network=none", "run", "--bundle"])
            .arg(&bundle)
            .arg(id))?;
        let el = t.elapsed();
        let _ = Command::new("runsc")
            .arg(format!("--root={}", raw_root.display()))
            .args(["delete", "-force", id])
            .output();
        Ok(el)
    };

    println!("sequential: {} iterations", o.iterations);
    let (mut raw_seq, mut kraal_seq, mut kraal_up, mut kraal_exec) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..o.iterations {
        raw_seq.push(ms(raw_run(&format!("raw-{i}"))?));
        let name = format!("seq-{i}");
        let t = Instant::now();
        sh(d.kraal(&kraal)
            .args(["up", repo.to_str().unwrap(), "--name", &name]))?;
        let up = t.elapsed();
        sh(d.kraal(&kraal).args(["exec", &name, "--", "true"]))?;
        let total = t.elapsed();
        kraal_up.push(ms(up));
        kraal_exec.push(ms(total - up));
        kraal_seq.push(ms(total));
    }
    let mut warm_exec = vec![];
    for _ in 0..20 {
        let t = Instant::now();
        sh(d.kraal(&kraal).args(["exec", "seq-0", "--", "true"]))?;
        warm_exec.push(ms(t.elapsed()));
    }

    println!("concurrent: {} creates at once", o.concurrent);
    let t = Instant::now();
    let raw_threads: Vec<_> = (0..o.concurrent)
        .map(|i| {
            let raw_root = raw_root.clone();
            let bundle = bundle.clone();
            std::thread::spawn(move || -> anyhow::Result<f64> {
                let t = Instant::now();
                let id = format!("rawc-{i}");
                sh(Command::new("runsc")
                    .arg(format!("--root={}", raw_root.display()))
                    .args(["--network=none", "run", "--bundle"])
                    .arg(&bundle)
                    .arg(&id))?;
                let el = ms(t.elapsed());
                let _ = Command::new("runsc")
                    .arg(format!("--root={}", raw_root.display()))
                    .args(["delete", "-force", &id])
                    .output();
                Ok(el)
            })
        })
        .collect();
    let raw_conc: Vec<f64> = raw_threads
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect::<Result<_, _>>()?;
    let raw_wall = ms(t.elapsed());

    let t = Instant::now();
    let threads: Vec<_> = (0..o.concurrent)
        .map(|i| {
            let kraal = kraal.clone();
            let socket = socket.clone();
            let repo = repo.clone();
            std::thread::spawn(move || -> anyhow::Result<f64> {
                let t = Instant::now();
                let name = format!("conc-{i}");
                sh(Command::new(&kraal).env("KRAAL_SOCKET", &socket).args([
                    "up",
                    repo.to_str().unwrap(),
                    "--name",
                    &name,
                ]))?;
                sh(Command::new(&kraal)
                    .env("KRAAL_SOCKET", &socket)
                    .args(["exec", &name, "--", "true"]))?;
                Ok(ms(t.elapsed()))
            })
        })
        .collect();
    let kraal_conc: Vec<f64> = threads
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect::<Result<_, _>>()?;
    let kraal_wall = ms(t.elapsed());

    // Idle memory per workspace: resident memory of each sandbox's runsc processes.
    let idle_rss_kib = sandbox_rss_kib(&d.data.join("runsc"));

    let results = json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": sh(Command::new("uname").arg("-r")).unwrap_or_default().trim() },
        "runsc": sh(Command::new("runsc").arg("--version")).unwrap_or_default().lines().next().unwrap_or_default(),
        "sequential": {
            "raw_runsc_run_true": stats(raw_seq.clone()),
            "kraal_create_to_first_exec": stats(kraal_seq.clone()),
            "kraal_up": stats(kraal_up),
            "kraal_first_exec": stats(kraal_exec),
            "kraal_warm_exec": stats(warm_exec.clone()),
        },
        "concurrent": {
            "n": o.concurrent,
            "raw_wall_ms": raw_wall,
            "raw_each": stats(raw_conc.clone()),
            "kraal_wall_ms": kraal_wall,
            "kraal_each": stats(kraal_conc.clone()),
        },
        "idle_workspace_rss_kib": idle_rss_kib,
    });
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("create.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "measurement (mean)", "kraal", "raw runsc", "ratio"
    );
    let row =
        |name: &str, k: f64, r: f64| println!("{name:<44} {k:>10.0}ms {r:>10.0}ms {:>7.1}x", k / r);
    row(
        "create → first exec (sequential)",
        mean(&kraal_seq),
        mean(&raw_seq),
    );
    row(
        &format!("{} concurrent creates, wall", o.concurrent),
        kraal_wall,
        raw_wall,
    );
    row(
        &format!("{} concurrent creates, each", o.concurrent),
        mean(&kraal_conc),
        mean(&raw_conc),
    );
    println!(
        "{:<44} {:>10.0}ms",
        "warm exec (`kraal exec ws -- true`)",
        mean(&warm_exec)
    );
    if let Some(kib) = idle_rss_kib {
        println!(
            "{:<44} {:>10.1}MiB",
            "host memory per idle workspace (runsc RSS)",
            kib / 1024.0
        );
    }
    println!("\nresults: {}", out_dir.join("create.json").display());

    // Clean up every workspace the benchmark made.
    let list = sh(d.kraal(&kraal).args(["ls", "--json"]))?;
    let v: serde_json::Value = serde_json::from_str(&list)?;
    for w in v.as_array().into_iter().flatten() {
        let _ = d
            .kraal(&kraal)
            .args(["rm", "--yes", w["name"].as_str().unwrap_or_default()])
            .output();
    }
    Ok(())
}

/// Mean resident memory (KiB) of the runsc processes per running sandbox.
fn sandbox_rss_kib(runsc_root: &Path) -> Option<f64> {
    let root_arg = format!("--root={}", runsc_root.display());
    let mut per_sandbox = vec![];
    let ids = sh(Command::new("runsc")
        .arg(&root_arg)
        .args(["list", "-quiet"]))
    .ok()?;
    let procs: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .ok()?
                .replace('\0', " ");
            Some((pid, cmd))
        })
        .collect();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let mut kib = 0.0;
        for (pid, cmd) in &procs {
            if cmd.contains(&root_arg)
                && cmd.contains(id)
                && (cmd.contains("runsc-sandbox")
                    || cmd.contains("runsc-gofer")
                    || cmd.contains(" boot ")
                    || cmd.contains(" gofer "))
                && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(l) = status.lines().find(|l| l.starts_with("VmRSS:"))
            {
                kib += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
        if kib > 0.0 {
            per_sandbox.push(kib);
        }
    }
    (!per_sandbox.is_empty()).then(|| per_sandbox.iter().sum::<f64>() / per_sandbox.len() as f64)
}
