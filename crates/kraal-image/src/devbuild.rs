//! Builds an image from a `devcontainer.json` without a container engine: the base image
//! is pulled and unpacked (or a Dockerfile's steps are run), then each feature's
//! `install.sh` runs in a sandbox whose writes land in a fresh directory — that directory
//! becomes the step's layer. Every layer is cached under the hash of its parent and its
//! input, so an unchanged configuration rebuilds without running anything.
//!
//! Operations on the trees being built (users, merging layers, `COPY`) are in `tree`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::devcontainer::{Base, DevContainer};
use crate::dockerfile::{self, Step};
use crate::features::{self, Feature};
use crate::registry::{self, Resolved};
use crate::tree::{copy_into, make_parents, resolve_in};
use crate::{
    Image, ImageConfig, ImageError, ImageStore, Layer, Output, Progress, Recipe, io, lock,
    lock_mode, now, remove_any, short_hash, write_json,
};

pub use crate::tree::{lookup_user, merge_layer};

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
        res.map(|img| self.chosen(img))
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
            Work::Mounts => crate::layers::add_mount_points(tree, out),
            Work::Guest(bin) => crate::layers::build_guest(bin, out),
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
                // The working directory as the step will see it (links resolved in the tree).
                let real_cwd = resolve_in(tree, cwd).map_err(|e| fail(e.to_string()))?;
                if !tree.join(&real_cwd).is_dir() {
                    make_parents(tree, out, &real_cwd).map_err(|e| fail(e.to_string()))?;
                    let d = out.join(&real_cwd);
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

/// The runner type the gVisor backend hands to the store.
pub type SharedRunner = Arc<dyn StepRunner>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_project() {
        assert_eq!(image_name(Path::new("/src/My_App.v2")), "dc-my-app-v2");
        assert_eq!(image_name(Path::new("/")), "dc-project");
    }
}
