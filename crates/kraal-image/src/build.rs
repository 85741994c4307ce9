//! Building an image from a [`Recipe`]: the plan of its layers and their hashes, each layer
//! built (or found cached) under its own lock, the root file system merged from them with
//! hard links, then the ext4 and OCI outputs asked for.

use std::time::{Duration, Instant};

use kraal_sandbox::process::Cmd;

use crate::layers::{build_agents, build_guest};
use crate::{
    Image, ImageConfig, ImageError, ImageStore, Layer, Output, Progress, Recipe, ext4, io, lock,
    lock_mode, now, oci, recipe, remove_any, short_hash, write_json,
};

/// Bumped when the way a layer kind is built changes, so caches rebuild.
const OS_REVISION: u32 = 2;
const AGENTS_REVISION: u32 = 1;
const IMAGE_REVISION: u32 = 1;

impl ImageStore {
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
            return Ok(self.chosen(img));
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
        Ok(self.chosen(img))
    }

    /// Marks `img` as just chosen and removes the builds of the same image it supersedes.
    pub(crate) fn chosen(&self, img: Image) -> Image {
        crate::prune::mark_used(&img.dir);
        self.prune_superseded(&img.name, &img.hash);
        img
    }

    /// Builds the `extra` outputs of `img` that are missing, numbering steps from `first`.
    pub(crate) async fn build_outputs(
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
}

/// The outputs asked for besides the root file system (always built).
pub(crate) fn extra_outputs(outputs: &[Output]) -> Vec<Output> {
    outputs
        .iter()
        .copied()
        .filter(|o| *o != Output::Rootfs)
        .collect()
}

/// Reports step `step` of `steps` to `progress`.
pub(crate) fn reporter(
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
