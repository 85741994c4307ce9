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
    if v.is_empty() {
        return json!({ "n": 0 });
    }
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
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

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

/// A section that failed half-way leaves no sandbox running: they outlive the daemon.
impl Drop for Setup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("  could not remove the bench's workspaces: {e:#}");
        }
    }
}

pub(crate) fn setup(env: &[(&str, &str)]) -> anyhow::Result<Setup> {
    let root = root();
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if BUILT.get().is_none() {
        build(&root)?;
        let _ = BUILT.set(());
    }
    setup_built(&root, env)
}

fn build(root: &Path) -> anyhow::Result<()> {
    println!("building release binaries…");
    sh(Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "kraal"])
        .current_dir(root))?;
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
        .current_dir(root))?;
    Ok(())
}

fn setup_built(root: &Path, env: &[(&str, &str)]) -> anyhow::Result<Setup> {
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
    git_init(&repo)?;
    Ok(Setup {
        d,
        kraal,
        images,
        tmp,
        repo,
    })
}

/// Makes `dir` a git repository with everything in it committed.
pub(crate) fn git_init(dir: &Path) -> anyhow::Result<()> {
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
        sh(Command::new("git").args(&args).current_dir(dir))?;
    }
    Ok(())
}

impl Setup {
    /// `kraal ARGS` against this daemon; its standard output, or the error with its output.
    pub fn kraal(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(self.d.kraal(&self.kraal).args(args))
    }

    /// The first workspace on a new image builds the image: done once before measuring.
    pub fn warm_up(&self) -> anyhow::Result<()> {
        println!("  warming up (builds the base image on first use)…");
        self.kraal(&["up", self.repo.to_str().unwrap(), "--name", "warmup"])?;
        self.kraal(&["exec", "warmup", "--", "true"])?;
        self.kraal(&["rm", "--yes", "warmup"])?;
        Ok(())
    }

    /// Creates `names` from the benchmark repository, `at_once` at a time; each create is
    /// followed by a first `exec true`. Returns each one's time (ms).
    pub fn create_many(&self, names: &[String], at_once: usize) -> anyhow::Result<Vec<f64>> {
        let repo = self.repo.to_str().unwrap().to_owned();
        let mut times = Vec::with_capacity(names.len());
        for chunk in names.chunks(at_once.max(1)) {
            let r: Vec<anyhow::Result<f64>> = std::thread::scope(|s| {
                let hs: Vec<_> = chunk
                    .iter()
                    .map(|name| {
                        let repo = &repo;
                        s.spawn(move || {
                            let t = Instant::now();
                            self.kraal(&["up", repo, "--name", name])?;
                            self.kraal(&["exec", name, "--", "true"])?;
                            Ok(ms(t.elapsed()))
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for x in r {
                times.push(x?);
            }
        }
        Ok(times)
    }

    /// Removes every workspace of this daemon, 16 at a time.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        let v: serde_json::Value = serde_json::from_str(&self.kraal(&["ls", "--json"])?)?;
        let names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["name"].as_str().map(str::to_owned))
            .collect();
        for chunk in names.chunks(16) {
            std::thread::scope(|s| {
                for n in chunk {
                    s.spawn(move || self.kraal(&["rm", "--yes", n]));
                }
            });
        }
        Ok(())
    }

    /// The root file system of the built base image (for raw runsc baselines).
    pub fn base_rootfs(&self) -> anyhow::Result<PathBuf> {
        Ok(std::fs::read_dir(&self.images)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.join("complete").is_file()
                    && p.join("image.json").is_file()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("base-"))
            })
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .context("base image not found")?
            .join("rootfs"))
    }
}

/// Raw runsc, no kraal: bundles on the image's root file system under a private root.
pub(crate) struct RawRunsc {
    root: PathBuf,
    bundle: PathBuf,
}

impl RawRunsc {
    /// A bundle running `args` on `rootfs` (read-only, no network).
    pub fn new(dir: &Path, rootfs: &Path, args: &[&str]) -> anyhow::Result<RawRunsc> {
        let bundle = dir.join("raw-bundle");
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&json!({
                "ociVersion": "1.0.2",
                "root": { "path": rootfs, "readonly": true },
                "process": { "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/usr/bin:/bin"], "cwd": "/" },
                "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
                "linux": { "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}] }
            }))?,
        )?;
        Ok(RawRunsc {
            root: dir.join("raw-runsc"),
            bundle,
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("runsc");
        c.arg(format!("--root={}", self.root.display()))
            .arg("--network=none");
        c
    }

    /// A sandbox that stays up (`runsc run --detach`), then `runsc exec` of `/bin/true` in
    /// it: the raw counterpart of a workspace's create → first exec. Its time (ms); the
    /// sandbox keeps running until [`RawRunsc::delete`].
    pub fn start_and_exec(&self, id: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        self.start_detached(id)?;
        sh(self.cmd().args(["exec", id, "/bin/true"]))?;
        Ok(ms(t.elapsed()))
    }

    /// `n` of [`RawRunsc::start_and_exec`] at once: each one's time and the time until the
    /// last was done (ms). All of them are deleted afterwards (not timed). Ids have a fixed
    /// width: runsc takes an id that is a prefix of another's as ambiguous.
    pub fn start_and_exec_concurrently(
        &self,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<(Vec<f64>, f64)> {
        let t = Instant::now();
        let r: anyhow::Result<Vec<f64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|i| s.spawn(move || self.start_and_exec(&format!("{prefix}-{i:04}"))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = ms(t.elapsed());
        std::thread::scope(|s| {
            for i in 0..n {
                s.spawn(move || self.delete(&format!("{prefix}-{i:04}")));
            }
        });
        Ok((r?, wall))
    }

    /// Starts a sandbox that keeps running (`runsc run --detach`).
    pub fn start_detached(&self, id: &str) -> anyhow::Result<()> {
        // The container keeps its standard streams: no pipes, or reading them never ends.
        let status = self
            .cmd()
            .args(["run", "--detach", "--bundle"])
            .arg(&self.bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("runsc run --detach {id} failed: {status}");
        }
        Ok(())
    }

    pub fn delete(&self, id: &str) {
        let _ = self.cmd().args(["delete", "-force", id]).output();
    }

    pub fn root_arg(&self) -> String {
        format!("--root={}", self.root.display())
    }
}

/// The number of a `Key:   N kB` line in a `/proc` file (`/proc/meminfo`,
/// `/proc/PID/status`, `/proc/PID/smaps_rollup`), KiB.
pub(crate) fn proc_kib(path: &str, key: &str) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The host's available memory (`MemAvailable`), KiB.
pub(crate) fn mem_available_kib() -> f64 {
    proc_kib("/proc/meminfo", "MemAvailable:").unwrap_or(0.0)
}

/// The sandbox (sentry) and gofer processes of the runsc root `root_arg` (`--root=…`):
/// pid and command line (arguments joined by spaces).
pub(crate) fn runsc_processes(root_arg: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .ok()?
                .replace('\0', " ");
            (cmd.contains(root_arg)
                && (cmd.contains("runsc-sandbox")
                    || cmd.contains("runsc-gofer")
                    || cmd.contains(" boot ")
                    || cmd.contains(" gofer ")))
            .then_some((pid, cmd))
        })
        .collect()
}

/// Whether a command line from [`runsc_processes`] is a sandbox's sentry.
pub(crate) fn is_sentry(cmd: &str) -> bool {
    cmd.contains("runsc-sandbox") || cmd.contains(" boot ")
}

/// Mean resident memory (KiB) of the runsc sandbox and gofer processes per sandbox under
/// the runsc root given as `root_arg` (`--root=…`).
pub(crate) fn sandbox_rss_kib(root_arg: &str) -> Option<f64> {
    sandbox_mem_kib(root_arg, "status", "VmRSS:")
}

/// Mean proportional set size (KiB) per sandbox: resident memory with every shared page
/// (the runsc binary, shared libraries) divided among the processes sharing it — what one
/// more sandbox costs.
pub(crate) fn sandbox_pss_kib(root_arg: &str) -> Option<f64> {
    sandbox_mem_kib(root_arg, "smaps_rollup", "Pss:")
}

fn sandbox_mem_kib(root_arg: &str, file: &str, field: &str) -> Option<f64> {
    let ids = sh(Command::new("runsc").arg(root_arg).args(["list", "-quiet"])).ok()?;
    let procs = runsc_processes(root_arg);
    let mut per_sandbox = vec![];
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let kib: f64 = procs
            .iter()
            .filter(|(_, cmd)| cmd.contains(id))
            .filter_map(|(pid, _)| proc_kib(&format!("/proc/{pid}/{file}"), field))
            .sum();
        if kib > 0.0 {
            per_sandbox.push(kib);
        }
    }
    (!per_sandbox.is_empty()).then(|| per_sandbox.iter().sum::<f64>() / per_sandbox.len() as f64)
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(crate) fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((q * (v.len() as f64 - 1.0)).round() as usize).min(v.len() - 1)]
}

/// The suite's sections, in the order they run.
const SECTIONS: [&str; 8] = [
    "create",
    "memory",
    "checkpoint",
    "vm",
    "events",
    "backup",
    "egress",
    "tasks",
];

struct Opts {
    only: Vec<String>,
    iterations: usize,
    concurrent: Vec<usize>,
    max_idle: usize,
    max_create_s: f64,
    accel: String,
    events: crate::bench_events::Opts,
    egress_iterations: usize,
    tasks: usize,
    publish: bool,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        only: SECTIONS.map(str::to_owned).to_vec(),
        iterations: 5,
        concurrent: vec![20, 100],
        max_idle: 1000,
        max_create_s: 20.0,
        accel: "tcg".into(),
        events: crate::bench_events::Opts {
            sessions: 100,
            workspaces: 10,
            subscribers: 500,
            events: 200,
            rate: 20,
            burst: 2000,
            runs: 3,
        },
        egress_iterations: 50,
        tasks: 200,
        publish: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--publish" {
            o.publish = true;
            continue;
        }
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value"))?
            .as_str();
        let num = || -> anyhow::Result<usize> {
            v.parse()
                .with_context(|| format!("{a} needs a number, not {v:?}"))
        };
        match a.as_str() {
            "--only" => {
                o.only = v.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bail!(
                        "unknown section {bad:?}: the sections are {}",
                        SECTIONS.join(", ")
                    );
                }
            }
            "--iterations" => o.iterations = num()?.max(1),
            "--concurrent" => {
                o.concurrent = v
                    .split(',')
                    .map(|n| n.parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--concurrent takes numbers like 20,100, not {v:?}"))?
            }
            "--max-idle" => o.max_idle = num()?,
            "--max-create-secs" => o.max_create_s = num()? as f64,
            "--accel" if v == "tcg" || v == "kvm" => o.accel = v.into(),
            "--accel" => bail!("--accel is tcg or kvm, not {v:?}"),
            "--sessions" => o.events.sessions = num()?,
            "--workspaces" => o.events.workspaces = num()?,
            "--subscribers" => o.events.subscribers = num()?,
            "--events" => o.events.events = num()?,
            "--rate" => o.events.rate = num()?,
            "--burst" => o.events.burst = num()?,
            "--runs" => o.events.runs = num()?,
            "--egress-iterations" => o.egress_iterations = num()?.max(3),
            "--tasks" => o.tasks = num()?.max(1),
            other => bail!("unknown bench option {other} (see `cargo xtask help`)"),
        }
    }
    Ok(o)
}

fn first_line(cmd: &mut Command) -> String {
    sh(cmd)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    json!({
        "date": first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        "commit": first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(root())),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or_default().trim(),
        "mem_total": proc_kib("/proc/meminfo", "MemTotal:").map(|k| format!("{:.1} GiB", k / 1048576.0)).unwrap_or_default(),
        "kernel": first_line(Command::new("uname").arg("-r")),
        "runsc": first_line(Command::new("runsc").arg("--version")),
        "qemu": first_line(Command::new("qemu-system-x86_64").arg("--version")),
    })
}

/// `cargo xtask bench`: every section, each measurement next to its raw baseline in the
/// same run; one table, `target/bench/results.json` and `target/bench/results.svg`
/// (`--publish` also writes them to `docs/benchmarks.json` and `docs/benchmarks.svg`).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    let started = Instant::now();
    let mut sections = vec![];
    let mut errors: Vec<(String, String)> = vec![];
    for name in &o.only {
        println!("== {name} ==");
        let t = Instant::now();
        let r = match name.as_str() {
            "create" => setup(&[])
                .and_then(|s| crate::bench_create::section(&s, o.iterations, &o.concurrent)),
            "memory" => setup(&[])
                .and_then(|s| crate::bench_memory::section(&s, o.max_idle, o.max_create_s)),
            "vm" => setup(&[("KRAAL_BACKEND", "qemu"), ("KRAAL_QEMU_ACCEL", &o.accel)])
                .and_then(|s| crate::bench_vm::section(&s, o.iterations, &o.accel)),
            "events" => setup(&[]).and_then(|s| crate::bench_events::section(&s, &o.events)),
            "backup" => setup(&[]).and_then(|s| crate::bench_backup::section(&s)),
            "checkpoint" => setup(&crate::bench_checkpoint::DAEMON_ENV)
                .and_then(|s| crate::bench_checkpoint::section(&s, o.iterations)),
            "egress" => {
                let env = crate::bench_egress::daemon_env();
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                setup(&env).and_then(|s| crate::bench_egress::section(&s, o.egress_iterations))
            }
            "tasks" => {
                let at_once = crate::bench_tasks::AT_ONCE.to_string();
                setup(&[("KRAAL_MAX_RUNNING", &at_once)])
                    .and_then(|s| crate::bench_tasks::section(&s, o.tasks))
            }
            _ => unreachable!("sections are validated when parsing"),
        };
        match r {
            Ok(s) => {
                println!("  done in {:.0} s", t.elapsed().as_secs_f64());
                sections.push(s);
            }
            Err(e) => {
                eprintln!("  section {name} failed: {e:#}");
                errors.push((name.clone(), format!("{e:#}")));
            }
        }
    }

    let out = root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let mut doc = crate::report::to_json(machine(), &sections, &errors);
    doc["suite_seconds"] = json!(started.elapsed().as_secs_f64());
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc)?)?;
    let svg_path = out.join("results.svg");
    let title = format!(
        "kraal benchmarks — {} ({} CPUs, {}), commit {}",
        doc["machine"]["date"].as_str().unwrap_or_default(),
        doc["machine"]["cpus"],
        doc["machine"]["mem_total"].as_str().unwrap_or_default(),
        doc["machine"]["commit"].as_str().unwrap_or_default()
    );
    crate::report::chart(&svg_path, &title, &sections)?;
    println!();
    print!("{}", crate::report::table(&sections));
    println!(
        "\nresults: {} and {} ({:.0} s in all)",
        json_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
    if o.publish {
        std::fs::copy(&json_path, root().join("docs/benchmarks.json"))?;
        std::fs::copy(&svg_path, root().join("docs/benchmarks.svg"))?;
        println!("published to docs/benchmarks.json and docs/benchmarks.svg");
    }
    if !errors.is_empty() {
        bail!(
            "{} section(s) failed: {}",
            errors.len(),
            errors
                .iter()
                .map(|(s, e)| format!("{s}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}
