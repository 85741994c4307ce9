//! Workspace images: a declarative [`Recipe`] is built into content-addressed **layers**
//! (the Debian system from debootstrap, the agent CLIs from npm, the guest agent), each
//! cached under the hash of what went into it, then assembled into the outputs the
//! backends need: a root file system directory (gVisor), an ext4 disk image (microVMs)
//! and an OCI image layout (Kubernetes). Everything is built in a temporary directory and
//! renamed into place only when complete, under a lock, so concurrent daemons and
//! interrupted builds never see or leave a half-built image.

pub mod devbuild;
pub mod devcontainer;
pub mod dockerfile;
pub mod ext4;
pub mod features;
pub mod kernel;
pub mod oci;
pub mod recipe;
pub mod registry;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraal_sandbox::process::{Cmd, ProcessError, which};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use recipe::Recipe;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("recipe {recipe}: {message}")]
    Recipe { recipe: String, message: String },
    #[error("{}: {message}", path.display())]
    DevContainer { path: PathBuf, message: String },
    #[error("registry: {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("feature {feature}: {message}")]
    Feature { feature: String, message: String },
    #[error("building image {name}: {step} failed: {message}")]
    Step {
        name: String,
        step: String,
        message: String,
    },
    #[error("no recipe named {name:?} (built-in: {known}); give a file with --file")]
    UnknownRecipe { name: String, known: String },
    #[error("no image named {0:?} is built")]
    NotFound(String),
    #[error(
        "no image named {name:?}: it is neither built-in ({known}) nor built with `kraal image build --file`"
    )]
    UnknownImage { name: String, known: String },
    /// A project's dev container failed; the message names the project's own files.
    #[error("{message}")]
    Project { message: String },
    #[error("image {name} is used by workspace(s) {users}; remove them first (`kraal rm`)")]
    InUse { name: String, users: String },
    #[error("{program} is not installed; run the project's setup (scripts/setup.sh){hint}")]
    MissingTool { program: String, hint: String },
    #[error("building image {name}: {step} failed")]
    Build {
        name: String,
        step: &'static str,
        #[source]
        source: ProcessError,
    },
    #[error("image store i/o failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Bumped when the way a layer kind is built changes, so caches rebuild.
const OS_REVISION: u32 = 2;
const AGENTS_REVISION: u32 = 1;
const IMAGE_REVISION: u32 = 1;

/// Where the agent CLIs live inside an image that carries them.
pub const AGENTS_DIR: &str = "opt/kraal/agents";

/// The formats a build can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// A root file system directory (always built; the others are made from it).
    Rootfs,
    /// An ext4 file system image with the root file system, for microVMs.
    Ext4,
    /// An OCI image layout directory, one layer per kraal layer.
    Oci,
}

impl Output {
    pub const ALL: [Output; 3] = [Output::Rootfs, Output::Ext4, Output::Oci];

    pub fn as_str(self) -> &'static str {
        match self {
            Output::Rootfs => "rootfs",
            Output::Ext4 => "ext4",
            Output::Oci => "oci",
        }
    }

    pub fn parse(s: &str) -> Result<Output, String> {
        Output::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown image output {s:?} (rootfs, ext4, oci)"))
    }
}

/// One step of a build, for progress displays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// 1-based step number and the number of steps.
    pub step: u32,
    pub steps: u32,
    /// What the step does, e.g. "system packages (debootstrap)".
    pub title: String,
    /// A line of the tool's output, or the step's result ("cached", "done in 3 s").
    pub detail: String,
    /// Whether the step has finished.
    pub done: bool,
}

/// A content-addressed layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// `os`, `agents` or `guest`.
    pub kind: String,
    pub hash: String,
    pub dir: PathBuf,
}

/// What a workspace started from an image gets besides its files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: std::collections::BTreeMap<String, String>,
    pub start: Vec<Vec<String>>,
    pub ports: Vec<u16>,
    /// Whether `/opt/kraal/agents` holds the agent CLIs (else the backend mounts the host's).
    pub has_agents: bool,
    /// The user sessions and commands run as (`None`: root).
    #[serde(default)]
    pub user: Option<String>,
    /// Run once, when the workspace is first started: stages in order, the commands of a
    /// stage in parallel (devcontainer onCreate/updateContent/postCreate commands).
    #[serde(default)]
    pub on_create: Vec<Vec<Vec<String>>>,
    /// Run whenever the workspace starts, after `on_create` (postStartCommand).
    #[serde(default)]
    pub on_start: Vec<Vec<Vec<String>>>,
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub hash: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub recipe: Recipe,
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
    pub built_at: String,
    /// Outputs present besides the root file system.
    #[serde(default)]
    pub outputs: Vec<Output>,
}

impl Image {
    pub fn ext4(&self) -> Option<PathBuf> {
        self.outputs
            .contains(&Output::Ext4)
            .then(|| self.dir.join("rootfs.ext4"))
    }

    pub fn oci(&self) -> Option<PathBuf> {
        self.outputs
            .contains(&Output::Oci)
            .then(|| self.dir.join("oci"))
    }

    /// Bytes on disk of each output (hard links into layers counted once).
    pub fn sizes(&self) -> Vec<(Output, u64)> {
        let mut v = vec![(Output::Rootfs, dir_size(&self.rootfs))];
        if let Some(p) = self.ext4() {
            v.push((
                Output::Ext4,
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
            ));
        }
        if let Some(p) = self.oci() {
            v.push((Output::Oci, dir_size(&p)));
        }
        v
    }
}

/// Apparent size of a tree, hard links once.
pub fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))))
        .map(|m| m.len())
        .sum()
}

/// Where images live.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    mirror: String,
    guest: Option<PathBuf>,
    runner: Option<devbuild::SharedRunner>,
}

/// An exclusive lock on a file, held while the value lives.
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

async fn lock(path: PathBuf) -> Result<Lock, ImageError> {
    lock_mode(path, true, true)
        .await
        .map(|l| l.expect("blocking locks are always taken"))
}

/// Takes a lock on `path`: exclusive or shared, waiting for it or not (`None`: busy).
async fn lock_mode(path: PathBuf, exclusive: bool, wait: bool) -> Result<Option<Lock>, ImageError> {
    tokio::task::spawn_blocking(move || flock(&path, exclusive, wait))
        .await
        .expect("lock task does not panic")
}

/// The blocking form of [`lock_mode`].
fn flock(path: &Path, exclusive: bool, wait: bool) -> Result<Option<Lock>, ImageError> {
    use nix::fcntl::FlockArg;
    let arg = match (exclusive, wait) {
        (true, true) => FlockArg::LockExclusive,
        (true, false) => FlockArg::LockExclusiveNonblock,
        (false, true) => FlockArg::LockShared,
        (false, false) => FlockArg::LockSharedNonblock,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    match nix::fcntl::Flock::lock(f, arg) {
        Ok(l) => Ok(Some(Lock(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(ImageError::Io {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

fn short_hash(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// Removes `path` whatever it is; missing is fine.
fn remove_any(path: &Path) {
    if path.is_dir() && !path.is_symlink() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let mirror = std::env::var("KRAAL_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned());
        ImageStore {
            dir: dir.into(),
            mirror,
            guest: None,
            runner: None,
        }
    }

    /// Runs build steps (Dockerfile `RUN`, feature installs) with this sandbox runner.
    pub fn with_runner(mut self, runner: devbuild::SharedRunner) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Puts this guest agent binary into every image (at `/.kraal/kraal-guest`).
    pub fn with_guest(mut self, guest: Option<PathBuf>) -> Self {
        self.guest = guest;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    /// The layers of a recipe, with the hash each would have (built or not).
    fn plan(&self, r: &Recipe) -> Result<Vec<(String, String, Vec<u8>)>, ImageError> {
        let mut v = Vec::new();
        let os = serde_json::json!({
            "rev": OS_REVISION, "suite": r.suite, "variant": r.variant, "packages": r.packages,
        });
        v.push((
            "os".to_owned(),
            short_hash(os.to_string().as_bytes()),
            vec![],
        ));
        let agents = r.agent_packages();
        if !agents.is_empty() {
            let key = serde_json::json!({
                "rev": AGENTS_REVISION, "packages": agents,
                "lock": short_hash(recipe::AGENT_LOCK.as_bytes()),
            });
            v.push((
                "agents".to_owned(),
                short_hash(key.to_string().as_bytes()),
                vec![],
            ));
        }
        if let Some(g) = &self.guest {
            let bin = std::fs::read(g).map_err(|_| ImageError::MissingTool {
                program: format!("the guest agent {}", g.display()),
                hint: "; build it with `cargo build --release -p kraal-guest --target x86_64-unknown-linux-musl`".into(),
            })?;
            v.push(("guest".to_owned(), short_hash(&bin), bin));
        }
        Ok(v)
    }

    fn image_hash(r: &Recipe, layers: &[(String, String, Vec<u8>)]) -> String {
        let key = serde_json::json!({
            "rev": IMAGE_REVISION,
            "recipe": r,
            "layers": layers.iter().map(|(k, h, _)| format!("{k}-{h}")).collect::<Vec<_>>(),
        });
        short_hash(key.to_string().as_bytes())
    }

    fn image_dir(&self, name: &str, hash: &str) -> PathBuf {
        self.dir.join(format!("{name}-{hash}"))
    }

    fn load(dir: &Path) -> Option<Image> {
        if !dir.join("complete").is_file() {
            return None;
        }
        let text = std::fs::read(dir.join("image.json")).ok()?;
        let mut img: Image = serde_json::from_slice(&text).ok()?;
        // The store may have moved since the build.
        img.dir = dir.to_owned();
        img.rootfs = dir.join("rootfs");
        img.outputs.retain(|o| match o {
            Output::Rootfs => true,
            Output::Ext4 => dir.join("rootfs.ext4").is_file(),
            Output::Oci => dir.join("oci/index.json").is_file(),
        });
        Some(img)
    }

    /// Returns the image, building what is missing first: layers, then the root file
    /// system, then the requested `outputs`. `progress` hears about every step.
    pub async fn ensure(
        &self,
        r: &Recipe,
        outputs: &[Output],
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let plan = self.plan(r)?;
        let hash = Self::image_hash(r, &plan);
        let dir = self.image_dir(&r.name, &hash);
        let extra = extra_outputs(outputs);
        let report = reporter(progress, plan.len() as u32 + 1 + extra.len() as u32);
        if let Some(img) = Self::load(&dir)
            && extra.iter().all(|o| img.outputs.contains(o))
        {
            for (i, (kind, h, _)) in plan.iter().enumerate() {
                report(
                    i as u32 + 1,
                    &layer_title(kind),
                    format!("cached ({h})"),
                    true,
                );
            }
            report(
                plan.len() as u32 + 1,
                "root file system",
                "cached".into(),
                true,
            );
            for (i, o) in extra.iter().enumerate() {
                report(
                    plan.len() as u32 + 2 + i as u32,
                    output_title(*o),
                    "cached".into(),
                    true,
                );
            }
            return Ok(img);
        }
        std::fs::create_dir_all(self.layers_dir()).map_err(io(&self.dir))?;
        // Builds hold the store lock shared; garbage collection needs it exclusively, so it
        // never deletes a layer a build is making or about to use.
        let _store = lock_mode(self.dir.join(".store.lock"), false, true).await?;
        let _lock = lock(self.dir.join(format!(".{}-{hash}.lock", r.name))).await?;

        // Layers.
        let mut layers = Vec::new();
        for (i, (kind, h, payload)) in plan.iter().enumerate() {
            let step = i as u32 + 1;
            let title = layer_title(kind);
            let ldir = self.layers_dir().join(format!("{kind}-{h}"));
            let done_mark = self.layers_dir().join(format!("{kind}-{h}.done"));
            // Checked under the layer's lock: another build may be making it right now.
            let _l = lock(self.layers_dir().join(format!(".{kind}-{h}.lock"))).await?;
            if done_mark.is_file() && ldir.is_dir() {
                report(step, &title, format!("cached ({h})"), true);
            } else {
                let t0 = Instant::now();
                report(step, &title, "building".into(), false);
                let tmp = self
                    .layers_dir()
                    .join(format!(".build-{kind}-{h}-{}", std::process::id()));
                remove_any(&tmp);
                remove_any(&ldir);
                std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
                let line = |l: String| report(step, &title, l, false);
                let built = match kind.as_str() {
                    "os" => self.build_os(r, &tmp, &line).await,
                    "agents" => build_agents(r, &tmp, &line).await,
                    _ => build_guest(payload, &tmp),
                };
                if let Err(e) = built {
                    remove_any(&tmp);
                    return Err(e);
                }
                std::fs::rename(&tmp, &ldir).map_err(io(&ldir))?;
                std::fs::write(&done_mark, b"").map_err(io(&done_mark))?;
                report(
                    step,
                    &title,
                    format!("built in {:.1} s", t0.elapsed().as_secs_f64()),
                    true,
                );
            }
            layers.push(Layer {
                kind: kind.clone(),
                hash: h.clone(),
                dir: ldir,
            });
        }

        // The root file system: the layers merged with hard links (no copy of the data).
        let step = plan.len() as u32 + 1;
        let mut img = match Self::load(&dir) {
            Some(img) => {
                report(step, "root file system", "cached".into(), true);
                img
            }
            None => {
                let t0 = Instant::now();
                report(step, "root file system", "merging layers".into(), false);
                let tmp = self
                    .dir
                    .join(format!(".build-{}-{hash}-{}", r.name, std::process::id()));
                remove_any(&tmp);
                remove_any(&dir);
                let res = async {
                    std::fs::create_dir_all(tmp.join("rootfs")).map_err(io(&tmp))?;
                    for l in &layers {
                        Cmd::new("cp")
                            .args([
                                "-a",
                                "--link",
                                "--remove-destination",
                                "--no-target-directory",
                            ])
                            .arg(&l.dir)
                            .arg(tmp.join("rootfs"))
                            .timeout(Duration::from_secs(600))
                            .run()
                            .await
                            .map_err(|source| ImageError::Build {
                                name: r.name.clone(),
                                step: "merging layers",
                                source,
                            })?;
                    }
                    let img = Image {
                        name: r.name.clone(),
                        hash: hash.clone(),
                        dir: dir.clone(),
                        rootfs: dir.join("rootfs"),
                        recipe: r.clone(),
                        layers: layers.clone(),
                        config: ImageConfig {
                            env: r.env.clone(),
                            start: r.start.clone(),
                            ports: r.ports.clone(),
                            has_agents: !r.agents.is_empty(),
                            ..ImageConfig::default()
                        },
                        built_at: now(),
                        outputs: vec![Output::Rootfs],
                    };
                    write_json(&tmp.join("image.json"), &img)?;
                    std::fs::write(tmp.join("complete"), b"").map_err(io(&tmp))?;
                    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
                    Ok::<_, ImageError>(img)
                }
                .await;
                if res.is_err() {
                    remove_any(&tmp);
                }
                let img = res?;
                report(
                    step,
                    "root file system",
                    format!("done in {:.1} s", t0.elapsed().as_secs_f64()),
                    true,
                );
                img
            }
        };

        self.build_outputs(&mut img, &extra, plan.len() as u32 + 2, &report)
            .await?;
        Ok(img)
    }

    /// Builds the `extra` outputs of `img` that are missing, numbering steps from `first`.
    async fn build_outputs(
        &self,
        img: &mut Image,
        extra: &[Output],
        first: u32,
        report: &(dyn Fn(u32, &str, String, bool) + Send + Sync),
    ) -> Result<(), ImageError> {
        let dir = img.dir.clone();
        for (i, o) in extra.iter().enumerate() {
            let step = first + i as u32;
            let title = output_title(*o);
            if img.outputs.contains(o) {
                report(step, title, "cached".into(), true);
                continue;
            }
            let t0 = Instant::now();
            report(step, title, "building".into(), false);
            match o {
                Output::Ext4 => {
                    ext4::build(&img.rootfs, &dir.join("rootfs.ext4"), &img.name).await?
                }
                Output::Oci => {
                    let (i, p) = (img.clone(), dir.join("oci"));
                    tokio::task::spawn_blocking(move || oci::build(&i, &p))
                        .await
                        .expect("the OCI writer does not panic")?
                }
                Output::Rootfs => {}
            }
            img.outputs.push(*o);
            write_json(&dir.join("image.json"), &*img)?;
            report(
                step,
                title,
                format!("done in {:.1} s", t0.elapsed().as_secs_f64()),
                true,
            );
        }
        Ok(())
    }

    async fn build_os(
        &self,
        r: &Recipe,
        tmp: &Path,
        line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ImageError> {
        if which("debootstrap").is_none() {
            return Err(ImageError::MissingTool {
                program: "debootstrap".into(),
                hint: " or `apt-get install debootstrap`".into(),
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut cmd = Cmd::new("debootstrap").arg(format!("--variant={}", r.variant));
        if !r.packages.is_empty() {
            cmd = cmd.arg(format!("--include={}", r.packages.join(",")));
        }
        let run = cmd
            .arg(&r.suite)
            .arg(tmp)
            .arg(&self.mirror)
            .timeout(Duration::from_secs(45 * 60))
            .lines_to(tx)
            .run();
        let relay = async {
            while let Some(l) = rx.recv().await {
                // debootstrap's "I: Retrieving x" / "I: Unpacking x" lines.
                if let Some(rest) = l.strip_prefix("I: ") {
                    line(rest.to_owned());
                }
            }
        };
        let (res, ()) = tokio::join!(run, relay);
        res.map_err(|source| ImageError::Build {
            name: r.name.clone(),
            step: "debootstrap",
            source,
        })?;
        post_process_os(tmp)
    }

    /// Built images, newest first.
    pub fn list(&self) -> Vec<Image> {
        let mut v: Vec<Image> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Self::load(&e.path()))
            .collect();
        v.sort_by(|a, b| b.built_at.cmp(&a.built_at).then(a.name.cmp(&b.name)));
        v
    }

    /// The image a new workspace runs on, with `outputs` built: the one it names (`image`),
    /// else its project's `devcontainer.json` found in `volume` (built on first use), else
    /// `default`. Errors about the project's files name them at `project`'s path, not at
    /// the volume's copy.
    pub async fn for_workspace(
        &self,
        image: Option<&str>,
        source: &kraal_core::Source,
        volume: &Path,
        default: &str,
        outputs: &[Output],
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        if image.is_none()
            && let Some(path) = devcontainer::find(volume)
        {
            // `${localWorkspaceFolder}` is the project on the host when there is one.
            let project = match source {
                kraal_core::Source::Local { path } => path.clone(),
                _ => volume.to_owned(),
            };
            let shown = |e: ImageError| ImageError::Project {
                message: kraal_sandbox::error_chain(&e)
                    .replace(&*volume.to_string_lossy(), &project.to_string_lossy()),
            };
            let dc = devcontainer::DevContainer::load(&path, &project).map_err(shown)?;
            let name = devbuild::image_name(Path::new(&source.basename().unwrap_or_default()));
            return self
                .ensure_devcontainer(&dc, &name, outputs, progress)
                .await
                .map_err(shown);
        }
        let name = image.unwrap_or(default);
        match Recipe::builtin(name) {
            Ok(recipe) => self.ensure(&recipe, outputs, progress).await,
            Err(_) => {
                let mut img = self.find(name).ok_or_else(|| ImageError::UnknownImage {
                    name: name.to_owned(),
                    known: recipe::BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
                let extra = extra_outputs(outputs);
                if extra.iter().any(|o| !img.outputs.contains(o)) {
                    let _lock =
                        lock(self.dir.join(format!(".{}-{}.lock", img.name, img.hash))).await?;
                    let report = reporter(progress, extra.len() as u32);
                    self.build_outputs(&mut img, &extra, 1, &report).await?;
                }
                Ok(img)
            }
        }
    }

    /// [`ImageStore::for_workspace`] for a sandbox about to be created, its build steps
    /// logged under the workspace's id.
    pub async fn for_sandbox(
        &self,
        spec: &kraal_sandbox::SandboxSpec,
        volume: &Path,
        default: &str,
        outputs: &[Output],
    ) -> Result<Image, ImageError> {
        let id = &spec.id;
        let log = |p: Progress| {
            if p.done || !p.detail.is_empty() {
                tracing::info!(workspace = %id, "image [{}/{}] {}: {}", p.step, p.steps, p.title, p.detail);
            }
        };
        self.for_workspace(
            spec.image.as_deref(),
            &spec.source,
            volume,
            default,
            outputs,
            &log,
        )
        .await
    }

    /// The newest build of the image called `name`.
    pub fn find(&self, name: &str) -> Option<Image> {
        self.list().into_iter().find(|i| i.name == name)
    }

    /// Records that workspace `user` runs on the image whose root is `rootfs`, so that
    /// `remove` refuses to delete it.
    pub fn add_user(rootfs: &Path, user: &str) -> Result<(), ImageError> {
        let d = rootfs.with_file_name("users");
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        std::fs::write(d.join(user), b"").map_err(io(&d))
    }

    /// Forgets `user` (its workspace was deleted).
    pub fn remove_user(rootfs: &Path, user: &str) {
        let _ = std::fs::remove_file(rootfs.with_file_name("users").join(user));
    }

    /// Ids of the workspaces that run on `img`, sorted.
    pub fn users(img: &Image) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(img.dir.join("users"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The image a root file system path belongs to, if it is a kraal image.
    pub fn image_of(rootfs: &Path) -> Option<Image> {
        Self::load(rootfs.parent()?)
    }

    /// Removes every build of `name`, then the layers no image uses any more. Refuses while
    /// a workspace runs on one of them. Returns the builds removed.
    pub fn remove(&self, name: &str) -> Result<Vec<Image>, ImageError> {
        let builds: Vec<Image> = self.list().into_iter().filter(|i| i.name == name).collect();
        if builds.is_empty() {
            return Err(ImageError::NotFound(name.to_owned()));
        }
        let mut users: Vec<String> = builds.iter().flat_map(Self::users).collect();
        if !users.is_empty() {
            users.sort();
            return Err(ImageError::InUse {
                name: name.to_owned(),
                users: users.join(", "),
            });
        }
        for b in &builds {
            // Unmark first so a crash half-way leaves no "complete" image.
            let _ = std::fs::remove_file(b.dir.join("complete"));
            std::fs::remove_dir_all(&b.dir).map_err(io(&b.dir))?;
        }
        self.gc_layers();
        Ok(builds)
    }

    /// Deletes layers no built image refers to, and leftovers of interrupted builds —
    /// only while no build is running (skipped otherwise).
    pub fn gc_layers(&self) {
        let Ok(Some(_gc)) = flock(&self.dir.join(".store.lock"), true, false) else {
            tracing::info!("a build is running; unused layers are kept for now");
            return;
        };
        let used: std::collections::HashSet<PathBuf> = self
            .list()
            .into_iter()
            .flat_map(|i| i.layers.into_iter().map(|l| l.dir))
            .collect();
        for e in std::fs::read_dir(self.layers_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".done") || name.ends_with(".lock") {
                continue;
            }
            if name.starts_with(".build-") || !used.contains(&p) {
                let _ = std::fs::remove_file(self.layers_dir().join(format!("{name}.done")));
                remove_any(&p);
            }
        }
    }
}

/// The outputs asked for besides the root file system (always built).
fn extra_outputs(outputs: &[Output]) -> Vec<Output> {
    outputs
        .iter()
        .copied()
        .filter(|o| *o != Output::Rootfs)
        .collect()
}

/// Reports step `step` of `steps` to `progress`.
fn reporter(
    progress: &(dyn Fn(Progress) + Send + Sync),
    steps: u32,
) -> impl Fn(u32, &str, String, bool) + Send + Sync + '_ {
    move |step, title, detail, done| {
        progress(Progress {
            step,
            steps,
            title: title.to_owned(),
            detail,
            done,
        })
    }
}

fn layer_title(kind: &str) -> String {
    match kind {
        "os" => "system packages (debootstrap)".into(),
        "agents" => "agent CLIs (npm)".into(),
        "guest" => "guest agent".into(),
        k => k.to_owned(),
    }
}

fn output_title(o: Output) -> &'static str {
    match o {
        Output::Rootfs => "root file system",
        Output::Ext4 => "ext4 disk image",
        Output::Oci => "OCI image layout",
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), ImageError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("serializes")).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Creates in `out` the mount points a sandbox binds over (the workspace volume, the guest
/// agent and its config, the agent CLIs, DNS and hosts files) that `tree` lacks.
pub(crate) fn add_mount_points(tree: &Path, out: &Path) -> Result<(), ImageError> {
    for d in ["workspace", ".kraal", AGENTS_DIR, "etc", "tmp"] {
        if !tree.join(d).exists() {
            let p = out.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
    }
    for f in [
        ".kraal/kraal-guest",
        ".kraal/guest.json",
        "etc/resolv.conf",
        "etc/hosts",
    ] {
        if !tree.join(f).exists() {
            let p = out.join(f);
            std::fs::create_dir_all(p.parent().expect("has a parent")).map_err(io(&p))?;
            std::fs::write(&p, b"").map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Makes a debootstrapped tree fit to be a sandbox root: mount points for the workspace
/// volume and the guest agent, no package caches, no SSH host keys (each workspace makes
/// its own).
fn post_process_os(rootfs: &Path) -> Result<(), ImageError> {
    add_mount_points(rootfs, rootfs)?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for e in std::fs::read_dir(rootfs.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().is_file() && e.file_name() != "lock" {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for e in std::fs::read_dir(rootfs.join("etc/ssh"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Installs the recipe's agent CLIs with npm into `<layer>/opt/kraal/agents`, pinned by
/// `agent-clis/package.json` and its lock, and links them (and `node`) into
/// `/usr/local/bin`.
async fn build_agents(
    r: &Recipe,
    tmp: &Path,
    line: &(dyn Fn(String) + Send + Sync),
) -> Result<(), ImageError> {
    if which("npm").is_none() {
        return Err(ImageError::MissingTool {
            program: "npm".into(),
            hint: " or `apt-get install npm`".into(),
        });
    }
    let dir = tmp.join(AGENTS_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let pkgs = r.agent_packages();
    let deps: serde_json::Map<String, serde_json::Value> = pkgs
        .iter()
        .map(|(p, v)| (p.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let manifest = serde_json::json!({
        "name": "kraal-image-agents", "private": true, "dependencies": deps,
    });
    write_json(&dir.join("package.json"), &manifest)?;
    std::fs::write(dir.join("package-lock.json"), recipe::AGENT_LOCK).map_err(io(&dir))?;
    line(format!(
        "npm install {}",
        pkgs.iter()
            .map(|(p, v)| format!("{p}@{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut npm = Cmd::new("npm");
    if std::env::var_os("HOME").is_none() {
        // A daemon started by systemd has no HOME for npm's cache: keep it with the images.
        let cache = tmp
            .parent()
            .and_then(Path::parent)
            .unwrap_or(tmp)
            .join(".npm-cache");
        npm = npm.env("npm_config_cache", cache);
    }
    let run = npm
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--loglevel=http",
            "--prefix",
        ])
        .arg(&dir)
        .timeout(Duration::from_secs(30 * 60))
        .lines_to(tx)
        .run();
    let relay = async {
        while let Some(l) = rx.recv().await {
            if !l.trim().is_empty() {
                line(l);
            }
        }
    };
    let (res, ()) = tokio::join!(run, relay);
    res.map_err(|source| ImageError::Build {
        name: r.name.clone(),
        step: "npm install of the agent CLIs",
        source,
    })?;
    let bin = tmp.join("usr/local/bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    let nm_bin = dir.join("node_modules/.bin");
    for e in std::fs::read_dir(&nm_bin).map_err(io(&nm_bin))?.flatten() {
        let name = e.file_name();
        let target = Path::new("/")
            .join(AGENTS_DIR)
            .join("node_modules/.bin")
            .join(&name);
        let link = bin.join(&name);
        remove_any(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
    }
    if !nm_bin.join("node").exists() {
        return Err(ImageError::Build {
            name: r.name.clone(),
            step: "npm install of the agent CLIs",
            source: ProcessError::Failed {
                command: "npm install".into(),
                status: "0".into(),
                stderr: format!(
                    "{} did not provide node_modules/.bin/node",
                    recipe::NODE_PACKAGE
                ),
            },
        });
    }
    Ok(())
}

/// The guest agent at `/.kraal/kraal-guest`.
pub(crate) fn build_guest(bin: &[u8], tmp: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp.join(".kraal");
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let p = d.join("kraal-guest");
    std::fs::write(&p, bin).map_err(io(&p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io(&p))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_builds_are_not_images() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path());
        let r = Recipe::base();
        let plan = store.plan(&r).unwrap();
        let dir = store.image_dir(&r.name, &ImageStore::image_hash(&r, &plan));
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let img = Image {
            name: r.name.clone(),
            hash: "x".into(),
            dir: dir.clone(),
            rootfs: dir.join("rootfs"),
            recipe: r.clone(),
            layers: vec![],
            config: ImageConfig::default(),
            built_at: now(),
            outputs: vec![Output::Rootfs, Output::Ext4],
        };
        write_json(&dir.join("image.json"), &img).unwrap();
        assert!(
            ImageStore::load(&dir).is_none(),
            "no complete marker, no image"
        );
        std::fs::write(dir.join("complete"), "").unwrap();
        let got = ImageStore::load(&dir).unwrap();
        assert_eq!(got.rootfs, dir.join("rootfs"));
        assert_eq!(
            got.outputs,
            [Output::Rootfs],
            "a missing ext4 file is not an output"
        );
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.find("base").unwrap().dir, dir);
    }

    #[test]
    fn image_hash_follows_recipe_and_guest() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("guest");
        std::fs::write(&g, b"v1").unwrap();
        let store = ImageStore::new(d.path()).with_guest(Some(g.clone()));
        let r = Recipe::base();
        let h1 = ImageStore::image_hash(&r, &store.plan(&r).unwrap());
        std::fs::write(&g, b"v2").unwrap();
        let h2 = ImageStore::image_hash(&r, &store.plan(&r).unwrap());
        assert_ne!(h1, h2, "a new guest agent makes a new image");
        let mut r2 = r.clone();
        r2.packages.push("vim".into());
        let p2 = store.plan(&r2).unwrap();
        assert_ne!(
            p2[0].1,
            store.plan(&r).unwrap()[0].1,
            "the os layer follows packages"
        );
        assert_eq!(
            p2[1].1,
            store.plan(&r).unwrap()[1].1,
            "the guest layer does not"
        );
    }

    #[test]
    fn missing_guest_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path()).with_guest(Some(d.path().join("nope")));
        let e = store.plan(&Recipe::base()).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("cargo build"), "{e}");
    }
}
