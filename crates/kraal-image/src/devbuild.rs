//! Builds an image from a `devcontainer.json` without a container engine: the base image
//! is pulled and unpacked (or a Dockerfile's steps are run), then each feature's
//! `install.sh` runs in a sandbox whose writes land in a fresh directory — that directory
//! becomes the step's layer. Every layer is cached under the hash of its parent and its
//! input, so an unchanged configuration rebuilds without running anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::devcontainer::{Base, DevContainer};
use crate::dockerfile::{self, Step};
use crate::features::{self, Feature};
use crate::registry::{self, Resolved};
use crate::{
    Image, ImageConfig, ImageError, ImageStore, Layer, Output, Progress, Recipe, io, lock,
    lock_mode, now, remove_any, short_hash, write_json,
};

/// A command to run in a sandbox whose root is `lower` with writes captured in `upper`.
#[derive(Debug, Clone)]
pub struct StepJob {
    pub lower: PathBuf,
    pub upper: PathBuf,
    /// Scratch space the runner may use (overlay work dir, bundle).
    pub scratch: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    /// Host directories bound read-write into the sandbox (under `/tmp`, so they never end
    /// up in the layer).
    pub binds: Vec<(PathBuf, String)>,
}

/// Runs build steps in a sandbox (the gVisor backend provides one).
#[async_trait::async_trait]
pub trait StepRunner: Send + Sync + std::fmt::Debug {
    /// Runs the job to completion; `Err` carries the exit status and the output's tail.
    async fn run(&self, job: &StepJob, line: &(dyn Fn(String) + Send + Sync))
    -> Result<(), String>;
}

/// Where a feature's files appear while its `install.sh` runs.
pub const FEATURE_MOUNT: &str = "/tmp/kraal-build/feature";

const DEVCONTAINER_REVISION: u32 = 1;

/// One layer of the chain and how to make it.
enum Work {
    Pull(Box<Resolved>),
    Run {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        user: Option<String>,
        cwd: String,
    },
    Copy {
        sources: Vec<PathBuf>,
        dest: String,
        chown: Option<String>,
    },
    Feature(Box<Feature>, BTreeMap<String, String>),
    Mounts,
    Guest(Vec<u8>),
}

struct Planned {
    kind: &'static str,
    hash: String,
    title: String,
    work: Work,
}

/// `uid`, `gid` and home of `spec` (`name`, `uid`, `name:group` or `uid:gid`) in the tree.
pub fn lookup_user(tree: &Path, spec: &str) -> Result<(u32, u32, String), String> {
    let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(tree.join("etc/group")).unwrap_or_default();
    let (u, g) = spec
        .split_once(':')
        .map(|(u, g)| (u, Some(g)))
        .unwrap_or((spec, None));
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || f[2] == u));
    let (uid, mut gid, home) = match entry {
        Some(f) => (
            f[2].parse()
                .map_err(|_| format!("bad passwd entry for {u}"))?,
            f[3].parse()
                .map_err(|_| format!("bad passwd entry for {u}"))?,
            f[5].to_owned(),
        ),
        None => match u.parse::<u32>() {
            Ok(n) => (n, n, "/".to_owned()),
            Err(_) => return Err(format!("user {u:?} does not exist in the image")),
        },
    };
    if let Some(g) = g {
        gid = match group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == g)
        {
            Some(f) => f[2]
                .parse()
                .map_err(|_| format!("bad group entry for {g}"))?,
            None => g
                .parse()
                .map_err(|_| format!("group {g:?} does not exist in the image"))?,
        };
    }
    Ok((uid, gid, home))
}

/// Applies one layer to `tree`: overlayfs whiteouts (character devices 0/0) delete what
/// they name, opaque directories hide what was below, then the layer's files are
/// hard-linked in.
pub async fn merge_layer(layer: &Path, tree: &Path) -> Result<(), ImageError> {
    let (l, t) = (layer.to_owned(), tree.to_owned());
    let marks = tokio::task::spawn_blocking(move || -> Result<Vec<(PathBuf, bool)>, ImageError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut marks = Vec::new();
        for e in walkdir::WalkDir::new(&l).min_depth(1) {
            let e = e.map_err(|e| io(&l)(e.into()))?;
            let md = e.path().symlink_metadata().map_err(io(e.path()))?;
            let rel = e
                .path()
                .strip_prefix(&l)
                .expect("under the layer")
                .to_owned();
            if md.file_type().is_char_device() && md.rdev() == 0 {
                remove_any(&t.join(&rel));
                marks.push((rel, false));
            } else if md.is_dir() && is_opaque(e.path()) {
                let d = t.join(&rel);
                for c in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    remove_any(&c.path());
                }
                marks.push((rel, true));
            }
        }
        Ok(marks)
    })
    .await
    .expect("the layer scan does not panic")?;
    kraal_sandbox::process::Cmd::new("cp")
        .args([
            "-a",
            "--link",
            "--remove-destination",
            "--no-target-directory",
        ])
        .arg(layer)
        .arg(tree)
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .await
        .map_err(|e| ImageError::Step {
            name: tree.display().to_string(),
            step: "merging layers".into(),
            message: kraal_sandbox::error_chain(&e),
        })?;
    for (rel, opaque) in marks {
        let p = tree.join(rel);
        if opaque {
            clear_opaque(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

const OPAQUE: &std::ffi::CStr = c"trusted.overlay.opaque";

fn is_opaque(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            OPAQUE.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn clear_opaque(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) {
        // SAFETY: both strings are NUL-terminated.
        unsafe { libc::lremovexattr(c.as_ptr(), OPAQUE.as_ptr()) };
    }
}

/// Image names derived from a project: `dc-<project>`, a-z 0-9 and '-'.
pub fn image_name(project: &Path) -> String {
    let base = project
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut s: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s = s.trim_matches('-').to_owned();
    s.truncate(36);
    format!(
        "dc-{}",
        if s.is_empty() {
            "project".into()
        } else {
            s.trim_end_matches('-').to_owned()
        }
    )
}

fn env_vec(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl ImageStore {
    /// Builds (or finds cached) the image `dc` describes, named `name`.
    pub async fn ensure_devcontainer(
        &self,
        dc: &DevContainer,
        name: &str,
        outputs: &[Output],
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        std::fs::create_dir_all(self.layers_dir()).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(
            ".build-{name}-{}-{}",
            std::process::id(),
            short_hash(now().as_bytes())
        ));
        remove_any(&tmp);
        std::fs::create_dir_all(tmp.join("work")).map_err(io(&tmp))?;
        let res = self
            .devcontainer_inner(dc, name, outputs, progress, &tmp)
            .await;
        remove_any(&tmp);
        res
    }

    async fn devcontainer_inner(
        &self,
        dc: &DevContainer,
        name: &str,
        outputs: &[Output],
        progress: &(dyn Fn(Progress) + Send + Sync),
        tmp: &Path,
    ) -> Result<Image, ImageError> {
        let work = tmp.join("work");
        let bad = |m: String| ImageError::DevContainer {
            path: dc.path.clone(),
            message: m,
        };
        // What the chain starts from.
        let df = match &dc.base {
            Base::Image(_) => None,
            Base::Dockerfile {
                dockerfile,
                context,
                args,
            } => {
                let text = std::fs::read_to_string(dockerfile).map_err(io(dockerfile))?;
                Some(dockerfile::plan(dockerfile, &text, args, context).map_err(bad)?)
            }
        };
        let from = match (&dc.base, &df) {
            (Base::Image(r), _) => r.clone(),
            (_, Some(p)) => p.from.clone(),
            _ => unreachable!("a Dockerfile base has a plan"),
        };
        progress(Progress {
            step: 0,
            steps: 0,
            title: "resolving".into(),
            detail: format!("base image {from}"),
            done: false,
        });
        let resolved = registry::resolve(&from).await?;
        progress(Progress {
            step: 0,
            steps: 0,
            title: "resolving".into(),
            detail: "features".into(),
            done: false,
        });
        let feats = features::resolve(dc, &work).await?;

        // Environment and users as the chain goes.
        let mut env = resolved.config.env.clone();
        let mut chain: Vec<Planned> = Vec::new();
        let mut parent = short_hash(
            json!({"rev": DEVCONTAINER_REVISION, "base": resolved.digest})
                .to_string()
                .as_bytes(),
        );
        chain.push(Planned {
            kind: "pull",
            hash: parent.clone(),
            title: format!("base image {from}"),
            work: Work::Pull(Box::new(resolved.clone())),
        });
        let mut push = |chain: &mut Vec<Planned>,
                        kind: &'static str,
                        key: serde_json::Value,
                        title: String,
                        work: Work| {
            parent = short_hash(json!({"parent": parent, "key": key}).to_string().as_bytes());
            chain.push(Planned {
                kind,
                hash: parent.clone(),
                title,
                work,
            });
        };
        let mut user = resolved.config.user.clone();
        if let Some(p) = &df {
            for s in &p.steps {
                match s {
                    Step::Run {
                        line,
                        argv,
                        env: senv,
                        user: su,
                        workdir,
                    } => {
                        let mut e = env.clone();
                        e.extend(senv.clone());
                        let u = su.clone().or(user.clone());
                        push(
                            &mut chain,
                            "run",
                            json!({"argv": argv, "env": e, "user": u, "cwd": workdir}),
                            format!(
                                "Dockerfile line {line}: RUN {}",
                                argv.last().map(String::as_str).unwrap_or("")
                            ),
                            Work::Run {
                                argv: argv.clone(),
                                env: e,
                                user: u,
                                cwd: workdir.clone(),
                            },
                        );
                    }
                    Step::Copy {
                        line,
                        sources,
                        dest,
                        chown,
                    } => {
                        let mut hashes = Vec::new();
                        for src in sources {
                            hashes.push(if src.is_dir() {
                                features::tree_hash(src)?
                            } else {
                                use sha2::Digest;
                                let data = std::fs::read(src).map_err(io(src))?;
                                hex::encode(sha2::Sha256::digest(&data))
                            });
                        }
                        push(
                            &mut chain,
                            "copy",
                            json!({"sources": sources.iter().map(|s| s.file_name().map(|n| n.to_string_lossy().into_owned())).collect::<Vec<_>>(), "content": hashes, "dest": dest, "chown": chown}),
                            format!("Dockerfile line {line}: COPY to {dest}"),
                            Work::Copy {
                                sources: sources.clone(),
                                dest: dest.clone(),
                                chown: chown.clone(),
                            },
                        );
                    }
                }
            }
            env.extend(p.env.clone());
            if p.user.is_some() {
                user = p.user.clone();
            }
        }
        let container_user = dc
            .container_user
            .clone()
            .or(user)
            .unwrap_or_else(|| "root".into());
        let remote_user = dc
            .remote_user
            .clone()
            .unwrap_or_else(|| container_user.clone());
        for f in &feats {
            let opts = f.option_env()?;
            push(
                &mut chain,
                "feature",
                json!({"content": f.content, "options": opts, "env": env, "users": [&remote_user, &container_user]}),
                format!("feature {}", f.reference),
                Work::Feature(Box::new(f.clone()), env.clone()),
            );
            env.extend(f.meta.container_env.clone());
        }
        push(
            &mut chain,
            "mounts",
            json!("mounts-v1"),
            "kraal mount points".into(),
            Work::Mounts,
        );
        if let Some(g) = &self.guest {
            let bin = std::fs::read(g).map_err(io(g))?;
            let h = short_hash(&bin);
            push(
                &mut chain,
                "guest",
                json!(h),
                "guest agent".into(),
                Work::Guest(bin),
            );
        }

        // The image's configuration.
        env.extend(dc.container_env.clone());
        let container_env = env.clone();
        for (k, v) in &dc.remote_env {
            match v {
                Some(v) => {
                    env.insert(
                        k.clone(),
                        crate::devcontainer::resolve_container_env(v, &container_env),
                    );
                }
                None => {
                    env.remove(k);
                }
            }
        }
        let agents_bin = format!("/{}/node_modules/.bin", crate::AGENTS_DIR);
        match env.get_mut("PATH") {
            Some(p) if !p.split(':').any(|d| d == agents_bin) => {
                p.push_str(&format!(":{agents_bin}"))
            }
            Some(_) => {}
            None => {
                env.insert(
                    "PATH".into(),
                    format!(
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{agents_bin}"
                    ),
                );
            }
        }
        let stage = |c: &crate::devcontainer::Command| c.argvs();
        let mut on_create: Vec<Vec<Vec<String>>> = feats
            .iter()
            .flat_map(|f| f.meta.create_commands.iter().map(stage))
            .collect();
        on_create.extend(dc.create_commands.iter().map(|(_, c)| stage(c)));
        let mut on_start: Vec<Vec<Vec<String>>> = feats
            .iter()
            .filter_map(|f| f.meta.post_start.as_ref().map(stage))
            .collect();
        on_start.extend(dc.post_start.iter().map(stage));
        let mut ports: Vec<u16> = resolved.config.ports.clone();
        if let Some(p) = &df {
            ports.extend(&p.ports);
        }
        ports.extend(&dc.forward_ports);
        ports.sort_unstable();
        ports.dedup();
        let config = ImageConfig {
            env,
            start: vec![],
            ports,
            has_agents: false,
            user: (remote_user != "root").then(|| remote_user.clone()),
            on_create,
            on_start,
        };
        let recipe = Recipe {
            name: name.to_owned(),
            // Not the file's path: workspaces of one project read it from different
            // volumes and must share the image.
            description: format!(
                "from devcontainer.json{}",
                dc.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            suite: String::new(),
            variant: String::new(),
            packages: vec![],
            agents: vec![],
            env: config.env.clone(),
            start: vec![],
            ports: config.ports.clone(),
        };
        let hash = short_hash(
            json!({"chain": chain.iter().map(|p| format!("{}-{}", p.kind, p.hash)).collect::<Vec<_>>(), "config": config, "recipe": recipe})
                .to_string()
                .as_bytes(),
        );
        let dir = self.image_dir(name, &hash);
        let extra = crate::extra_outputs(outputs);
        let report = crate::reporter(progress, chain.len() as u32 + 1 + extra.len() as u32);

        let _store = lock_mode(self.dir.join(".store.lock"), false, true).await?;
        let _lock = lock(self.dir.join(format!(".{name}-{hash}.lock"))).await?;
        // Built already (perhaps with running workspaces; checked under the lock, another
        // build may just have finished it): at most outputs are added.
        if let Some(mut img) = Self::load(&dir) {
            for (i, p) in chain.iter().enumerate() {
                report(i as u32 + 1, &p.title, format!("cached ({})", p.hash), true);
            }
            report(
                chain.len() as u32 + 1,
                "root file system",
                "cached".into(),
                true,
            );
            self.build_outputs(&mut img, &extra, chain.len() as u32 + 2, &report)
                .await?;
            return Ok(img);
        }
        let tree = tmp.join("rootfs");
        std::fs::create_dir_all(&tree).map_err(io(&tree))?;
        let mut layers = Vec::new();
        for (i, p) in chain.iter().enumerate() {
            let step = i as u32 + 1;
            let ldir = self.layers_dir().join(format!("{}-{}", p.kind, p.hash));
            let done_mark = self
                .layers_dir()
                .join(format!("{}-{}.done", p.kind, p.hash));
            let _l = lock(
                self.layers_dir()
                    .join(format!(".{}-{}.lock", p.kind, p.hash)),
            )
            .await?;
            if done_mark.is_file() && ldir.is_dir() {
                report(step, &p.title, format!("cached ({})", p.hash), true);
            } else {
                let t0 = Instant::now();
                report(step, &p.title, "building".into(), false);
                let ltmp = self.layers_dir().join(format!(
                    ".build-{}-{}-{}",
                    p.kind,
                    p.hash,
                    std::process::id()
                ));
                remove_any(&ltmp);
                remove_any(&ldir);
                std::fs::create_dir_all(&ltmp).map_err(io(&ltmp))?;
                let line = |l: String| report(step, &p.title, l, false);
                let built = self
                    .build_step(
                        name,
                        p,
                        &tree,
                        &ltmp,
                        &work.join(format!("step-{i}")),
                        &remote_user,
                        &container_user,
                        &line,
                    )
                    .await;
                if let Err(e) = built {
                    remove_any(&ltmp);
                    return Err(e);
                }
                std::fs::rename(&ltmp, &ldir).map_err(io(&ldir))?;
                std::fs::write(&done_mark, b"").map_err(io(&done_mark))?;
                report(
                    step,
                    &p.title,
                    format!("built in {:.1} s", t0.elapsed().as_secs_f64()),
                    true,
                );
            }
            merge_layer(&ldir, &tree).await?;
            layers.push(Layer {
                kind: p.kind.to_owned(),
                hash: p.hash.clone(),
                dir: ldir,
            });
        }
        let step = chain.len() as u32 + 1;
        remove_any(&work);
        let mut img = Image {
            name: name.to_owned(),
            hash: hash.clone(),
            dir: dir.clone(),
            rootfs: dir.join("rootfs"),
            recipe,
            layers,
            config,
            built_at: now(),
            outputs: vec![Output::Rootfs],
        };
        write_json(&tmp.join("image.json"), &img)?;
        std::fs::write(tmp.join("complete"), b"").map_err(io(tmp))?;
        // Not an image (checked under the lock above): what an interrupted removal left.
        remove_any(&dir);
        std::fs::rename(tmp, &dir).map_err(io(&dir))?;
        report(step, "root file system", "done".into(), true);
        self.build_outputs(&mut img, &extra, step + 1, &report)
            .await?;
        Ok(img)
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_step(
        &self,
        name: &str,
        p: &Planned,
        tree: &Path,
        out: &Path,
        scratch: &Path,
        remote_user: &str,
        container_user: &str,
        line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ImageError> {
        let fail = |m: String| ImageError::Step {
            name: name.to_owned(),
            step: p.title.clone(),
            message: m,
        };
        std::fs::create_dir_all(scratch).map_err(io(scratch))?;
        match &p.work {
            Work::Pull(r) => registry::unpack(r, out, scratch, line).await,
            Work::Mounts => crate::add_mount_points(tree, out),
            Work::Guest(bin) => crate::build_guest(bin, out),
            Work::Copy {
                sources,
                dest,
                chown,
            } => {
                let (uid, gid) = match chown {
                    Some(c) => lookup_user(tree, c).map(|(u, g, _)| (u, g)).map_err(fail)?,
                    None => (0, 0),
                };
                let (b, out2, tree2) = (sources.clone(), out.to_owned(), tree.to_owned());
                let dest = dest.clone();
                tokio::task::spawn_blocking(move || copy_into(&b, &dest, &tree2, &out2, uid, gid))
                    .await
                    .expect("copy does not panic")
                    .map_err(|e| fail(e.to_string()))
            }
            Work::Run {
                argv,
                env,
                user,
                cwd,
            } => {
                let (uid, gid, home) = match user {
                    Some(u) => lookup_user(tree, u).map_err(fail)?,
                    None => (0, 0, "/root".into()),
                };
                let mut env = env.clone();
                env.entry("HOME".into()).or_insert(home);
                env.entry("PATH".into()).or_insert_with(|| {
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                });
                if !tree.join(cwd.trim_start_matches('/')).is_dir() {
                    make_parents(tree, out, cwd.trim_start_matches('/'))
                        .map_err(|e| fail(e.to_string()))?;
                    let d = out.join(cwd.trim_start_matches('/'));
                    std::fs::create_dir_all(&d).map_err(io(&d))?;
                    std::os::unix::fs::chown(&d, Some(uid), Some(gid)).map_err(io(&d))?;
                }
                self.run_step(
                    StepJob {
                        lower: tree.to_owned(),
                        upper: out.to_owned(),
                        scratch: scratch.to_owned(),
                        argv: argv.clone(),
                        env: env_vec(&env),
                        uid,
                        gid,
                        cwd: cwd.clone(),
                        binds: vec![],
                    },
                    line,
                )
                .await
                .map_err(fail)
            }
            Work::Feature(f, env) => {
                let staging = scratch.join("feature");
                let argv = features::stage(f, &staging, remote_user, container_user)?;
                let mut env = env.clone();
                env.entry("HOME".into()).or_insert_with(|| "/root".into());
                env.entry("PATH".into()).or_insert_with(|| {
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                });
                self.run_step(
                    StepJob {
                        lower: tree.to_owned(),
                        upper: out.to_owned(),
                        scratch: scratch.to_owned(),
                        argv,
                        env: env_vec(&env),
                        uid: 0,
                        gid: 0,
                        cwd: "/".into(),
                        binds: vec![(staging, FEATURE_MOUNT.into())],
                    },
                    line,
                )
                .await
                .map_err(|m| ImageError::Feature {
                    feature: f.reference.clone(),
                    message: format!("install.sh failed: {m}"),
                })
            }
        }
    }

    async fn run_step(
        &self,
        job: StepJob,
        line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), String> {
        let Some(r) = &self.runner else {
            return Err("no sandbox runtime is configured to run build steps (the gVisor backend provides one)".into());
        };
        r.run(&job, line).await
    }
}

/// Creates `rel`'s missing parent directories in `out`, with the owner and mode they have
/// in `tree` (as an overlay copy-up would), so merging never changes them.
fn make_parents(tree: &Path, out: &Path, rel: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut cur = PathBuf::new();
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        let o = out.join(&cur);
        if o.is_dir() {
            continue;
        }
        std::fs::create_dir(&o)?;
        if let Ok(md) = std::fs::metadata(tree.join(&cur)) {
            std::fs::set_permissions(&o, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
            std::os::unix::fs::chown(&o, Some(md.uid()), Some(md.gid()))?;
        }
    }
    Ok(())
}

/// `COPY`: files land at `dest` (a directory when it ends in `/` or a source is one; a
/// directory source's contents are copied, not the directory), owned by `uid:gid`.
fn copy_into(
    sources: &[PathBuf],
    dest: &str,
    tree: &Path,
    out: &Path,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let rel = dest.trim_start_matches('/').trim_end_matches('/');
    let into_dir = dest.ends_with('/')
        || sources.len() > 1
        || sources.iter().any(|s| s.is_dir())
        || tree.join(rel).is_dir();
    make_parents(tree, out, &format!("{rel}/x"))?;
    for src in sources {
        let target = if into_dir && !src.is_dir() {
            out.join(rel).join(src.file_name().unwrap_or_default())
        } else {
            out.join(rel)
        };
        for e in walkdir::WalkDir::new(src) {
            let e = e.map_err(std::io::Error::other)?;
            let sub = e.path().strip_prefix(src).unwrap_or(Path::new(""));
            let dst = if sub.as_os_str().is_empty() {
                target.clone()
            } else {
                target.join(sub)
            };
            let md = e.path().symlink_metadata()?;
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if md.is_dir() {
                std::fs::create_dir_all(&dst)?;
            } else if md.file_type().is_symlink() {
                let _ = std::fs::remove_file(&dst);
                std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
            } else {
                std::fs::copy(e.path(), &dst)?;
                std::fs::set_permissions(
                    &dst,
                    std::fs::Permissions::from_mode(md.permissions().mode()),
                )?;
            }
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// The runner type the gVisor backend hands to the store.
pub type SharedRunner = Arc<dyn StepRunner>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(
            lookup_user(d.path(), "dev").unwrap(),
            (1000, 1000, "/home/dev".into())
        );
        assert_eq!(
            lookup_user(d.path(), "1000:staff").unwrap(),
            (1000, 50, "/home/dev".into())
        );
        assert_eq!(lookup_user(d.path(), "4242:4243").unwrap().0, 4242);
        assert!(
            lookup_user(d.path(), "nobody")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            lookup_user(d.path(), "dev:nogroup")
                .unwrap_err()
                .contains("group")
        );
    }

    #[test]
    fn names_come_from_the_project() {
        assert_eq!(image_name(Path::new("/src/My_App.v2")), "dc-my-app-v2");
        assert_eq!(image_name(Path::new("/")), "dc-project");
    }

    #[tokio::test]
    async fn merging_applies_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/old")).unwrap();
        std::fs::write(tree.join("etc/old/a"), "a").unwrap();
        std::fs::write(tree.join("etc/gone"), "g").unwrap();
        std::fs::create_dir_all(tree.join("opt/d")).unwrap();
        std::fs::write(tree.join("opt/d/hidden"), "h").unwrap();
        let layer = d.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::create_dir_all(layer.join("opt/d")).unwrap();
        std::fs::write(layer.join("opt/d/new"), "n").unwrap();
        std::fs::write(layer.join("etc/added"), "x").unwrap();
        nix::sys::stat::mknod(
            &layer.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let c = std::ffi::CString::new(layer.join("opt/d").to_str().unwrap()).unwrap();
        assert_eq!(
            unsafe { libc::lsetxattr(c.as_ptr(), OPAQUE.as_ptr(), b"y".as_ptr().cast(), 1, 0) },
            0
        );
        merge_layer(&layer, &tree).await.unwrap();
        assert!(!tree.join("etc/gone").exists(), "whiteout deleted the file");
        assert!(tree.join("etc/old/a").is_file());
        assert!(tree.join("etc/added").is_file());
        assert!(
            !tree.join("opt/d/hidden").exists(),
            "opaque dir hides what was below"
        );
        assert!(tree.join("opt/d/new").is_file());
        assert!(
            !is_opaque(&tree.join("opt/d")),
            "the mark does not stay in the tree"
        );
    }
}
