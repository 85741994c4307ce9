//! The image store: where images live, loading and listing the built ones, choosing the
//! image a workspace runs on (building it on first use), recording which workspaces use an
//! image, removal and garbage collection of unused layers, and the file locks that keep
//! concurrent builds and collections apart.

use std::path::{Path, PathBuf};

use crate::{Image, ImageError, Output, Progress, Recipe, devbuild, devcontainer, io, recipe};
use crate::{extra_outputs, remove_any, reporter};

/// Where images live.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) dir: PathBuf,
    pub(crate) mirror: String,
    pub(crate) guest: Option<PathBuf>,
    pub(crate) runner: Option<devbuild::SharedRunner>,
}

/// An exclusive lock on a file, held while the value lives.
pub(crate) struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub(crate) async fn lock(path: PathBuf) -> Result<Lock, ImageError> {
    lock_mode(path, true, true)
        .await
        .map(|l| l.expect("blocking locks are always taken"))
}

/// Takes a lock on `path`: exclusive or shared, waiting for it or not (`None`: busy).
pub(crate) async fn lock_mode(
    path: PathBuf,
    exclusive: bool,
    wait: bool,
) -> Result<Option<Lock>, ImageError> {
    tokio::task::spawn_blocking(move || flock(&path, exclusive, wait))
        .await
        .expect("lock task does not panic")
}

/// The blocking form of [`lock_mode`].
pub(crate) fn flock(path: &Path, exclusive: bool, wait: bool) -> Result<Option<Lock>, ImageError> {
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

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    pub(crate) fn image_dir(&self, name: &str, hash: &str) -> PathBuf {
        self.dir.join(format!("{name}-{hash}"))
    }

    pub(crate) fn load(dir: &Path) -> Option<Image> {
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

    /// Records that workspace `user`, whose backend keeps its state in `state` (a
    /// directory whose file `image` will name `rootfs`), runs on the image whose root is
    /// `rootfs`, so that `remove` refuses to delete it and superseded builds are kept.
    pub fn add_user(rootfs: &Path, user: &str, state: &Path) -> Result<(), ImageError> {
        let d = rootfs.with_file_name("users");
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        std::fs::write(d.join(user), state.as_os_str().as_encoded_bytes()).map_err(io(&d))
    }

    /// Forgets `user` (its workspace was deleted).
    pub fn remove_user(rootfs: &Path, user: &str) {
        let _ = std::fs::remove_file(rootfs.with_file_name("users").join(user));
    }

    /// Ids of the workspaces that run on `img`, sorted. A record whose workspace state is
    /// gone, or now names another image, is stale (a daemon killed with its data deleted)
    /// and is dropped; a record without a state directory (older kraal) counts.
    pub fn users(img: &Image) -> Vec<String> {
        let d = img.dir.join("users");
        let mut v: Vec<String> = std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let live = user_is_live(&e.path(), &img.rootfs);
                if !live {
                    let _ = std::fs::remove_file(e.path());
                }
                live
            })
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

/// Whether the user record at `record` still stands for a workspace on `rootfs`.
fn user_is_live(record: &Path, rootfs: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(state) = std::fs::read(record) else {
        return false;
    };
    if state.is_empty() {
        return true;
    }
    let state = Path::new(std::ffi::OsStr::from_bytes(&state));
    if !state.is_dir() {
        return false;
    }
    match std::fs::read_to_string(state.join("image")) {
        Ok(named) => Path::new(named.trim()) == rootfs,
        // Still being created: the backend writes `image` after recording the user.
        Err(_) => true,
    }
}
