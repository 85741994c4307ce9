//! The microVM boot artifacts: Debian's cloud kernel (downloaded with `apt-get download`)
//! and an initramfs made of the static guest agent as `/init` plus the few kernel modules
//! it loads (virtio-mmio, block, net, console, vsock, overlay, virtio-fs). Cached in the
//! image store by the hash of the kernel package version, the guest binary and the module
//! list.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_sandbox::process::{Cmd, which};
use serde::{Deserialize, Serialize};

use crate::{ImageError, ImageStore, io, remove_any, short_hash};

/// The Debian package whose dependency names the kernel to boot.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest loads at boot, in this order (each after its dependencies, which are
/// found in the modules' own `depends=` and added first).
pub const MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "overlay",
    "virtiofs",
];

/// Bumped when the initramfs layout changes.
const KERNEL_REVISION: u32 = 2;

/// Where the guest finds its modules in the initramfs, and the file listing the load order.
pub const MODULE_DIR: &str = "lib/modules";
pub const LOAD_ORDER: &str = "lib/modules/load-order";

/// A built kernel + initramfs pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// `linux-image-6.1.0-56-cloud-amd64 6.1.192-2`
    pub package: String,
    pub release: String,
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub vmlinuz: PathBuf,
    #[serde(skip)]
    pub initramfs: PathBuf,
    /// The uncompressed kernel (ELF), for hypervisors that cannot boot a bzImage
    /// (Firecracker); `None` when it could not be extracted.
    #[serde(skip)]
    pub vmlinux: Option<PathBuf>,
}

/// The versioned kernel package and its version that `meta` currently depends on, from
/// `apt-cache show` output.
pub fn parse_apt_show(text: &str) -> Option<(String, String)> {
    let mut version = None;
    let mut depends = None;
    for line in text.lines() {
        if line.is_empty() {
            break; // Only the first (candidate) record.
        }
        if let Some(v) = line.strip_prefix("Version: ") {
            version = Some(v.trim().to_owned());
        }
        if let Some(d) = line.strip_prefix("Depends: ") {
            let first = d.split(',').next()?.trim();
            depends = Some(first.split_whitespace().next()?.to_owned());
        }
    }
    Some((depends?, version?))
}

/// The `depends=` list of a kernel module file (its `.modinfo` strings).
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    ko.windows(needle.len())
        .position(|w| w == needle)
        .map(|i| {
            let rest = &ko[i + needle.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Every `*.ko` under `tree`, by module name (`-` and `_` are the same to the kernel).
fn index_modules(tree: &Path) -> std::collections::HashMap<String, PathBuf> {
    walkdir::WalkDir::new(tree)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_str()?
                .strip_suffix(".ko")?
                .replace('-', "_");
            Some((name, e.into_path()))
        })
        .collect()
}

/// `wanted` with their dependencies, dependencies first, each once.
pub fn load_order(
    wanted: &[&str],
    depends_of: &dyn Fn(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    fn visit(
        m: &str,
        depends_of: &dyn Fn(&str) -> Result<Vec<String>, String>,
        out: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        let m = m.replace('-', "_");
        if out.contains(&m) {
            return Ok(());
        }
        if path.contains(&m) {
            return Err(format!(
                "module dependency cycle: {} -> {m}",
                path.join(" -> ")
            ));
        }
        path.push(m.clone());
        for d in depends_of(&m)? {
            visit(&d, depends_of, out, path)?;
        }
        path.pop();
        out.push(m);
        Ok(())
    }
    let mut out = Vec::new();
    for m in wanted {
        visit(m, depends_of, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}

/// The uncompressed kernel (an ELF `vmlinux`) inside a bzImage: the payload the boot
/// header points at (`payload_offset`/`payload_length`), decompressed. Debian compresses
/// with LZ4 (legacy frames) or gzip.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, String> {
    let u32_at = |o: usize| -> Result<usize, String> {
        bz.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| "the file is too short for a bzImage header".to_owned())
    };
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS boot header)".into());
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    let payload = bz
        .get(start..start + len)
        .ok_or("the payload lies outside the file")?;
    let out = if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        // LZ4 legacy: blocks of [u32 compressed size][data], each up to 8 MiB unpacked;
        // the kernel build appends the unpacked size as the last 4 bytes.
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8 << 20];
        let mut pos = 4;
        while pos + 4 <= payload.len() {
            let n = u32::from_le_bytes(payload[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            if n == 0 || pos + 4 + n > payload.len() {
                break;
            }
            let k = lz4_flex::block::decompress_into(&payload[pos + 4..pos + 4 + n], &mut buf)
                .map_err(|e| format!("LZ4 block at {pos}: {e}"))?;
            out.extend_from_slice(&buf[..k]);
            pos += 4 + n;
        }
        out
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(payload), &mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        out
    } else {
        return Err(format!(
            "unsupported kernel compression (payload starts {:02x?})",
            &payload[..payload.len().min(4)]
        ));
    };
    if !out.starts_with(b"\x7fELF") {
        return Err("the decompressed kernel is not an ELF file".into());
    }
    Ok(out)
}

/// One initramfs entry.
enum Entry<'a> {
    Dir,
    File(&'a [u8], u32),
    CharDev(u32, u32),
}

/// Writes a newc cpio archive of `entries` (paths relative, parents before children).
fn write_cpio(out: &mut impl Write, entries: &[(String, Entry<'_>)]) -> std::io::Result<()> {
    for (ino, (name, e)) in entries.iter().enumerate() {
        let b = cpio::newc::Builder::new(name)
            .ino(ino as u32 + 1)
            .uid(0)
            .gid(0)
            .nlink(1);
        match e {
            Entry::Dir => {
                b.mode(0o040755).nlink(2).write(&mut *out, 0).finish()?;
            }
            Entry::File(data, mode) => {
                let mut w = b.mode(0o100000 | mode).write(&mut *out, data.len() as u32);
                w.write_all(data)?;
                w.finish()?;
            }
            Entry::CharDev(major, minor) => {
                b.mode(0o020600)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut *out, 0)
                    .finish()?;
            }
        }
    }
    cpio::newc::trailer(&mut *out)?;
    Ok(())
}

/// The initramfs: `/init` (the guest agent), the modules and their load order.
pub fn initramfs(guest: &[u8], modules: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut entries: Vec<(String, Entry<'_>)> = vec![
        ("dev".into(), Entry::Dir),
        ("dev/console".into(), Entry::CharDev(5, 1)),
        ("proc".into(), Entry::Dir),
        ("sys".into(), Entry::Dir),
        ("run".into(), Entry::Dir),
        ("newroot".into(), Entry::Dir),
        ("lib".into(), Entry::Dir),
        (MODULE_DIR.into(), Entry::Dir),
        ("init".into(), Entry::File(guest, 0o755)),
    ];
    let order: String = modules.iter().map(|(n, _)| format!("{n}\n")).collect();
    for (name, data) in modules {
        entries.push((format!("{MODULE_DIR}/{name}.ko"), Entry::File(data, 0o644)));
    }
    entries.push((LOAD_ORDER.into(), Entry::File(order.as_bytes(), 0o644)));
    let mut out = Vec::new();
    write_cpio(&mut out, &entries)?;
    Ok(out)
}

impl ImageStore {
    fn kernels_dir(&self) -> PathBuf {
        self.dir.join("kernels")
    }

    /// The kernel and initramfs for microVMs, downloading and building them when the
    /// current kernel package, the guest agent or the module list changed.
    pub async fn ensure_kernel(
        &self,
        progress: &(dyn Fn(crate::Progress) + Send + Sync),
    ) -> Result<Kernel, ImageError> {
        let guest_path = self.guest.clone().ok_or_else(|| ImageError::MissingTool {
            program: "the guest agent".into(),
            hint: "; build it with `cargo build --release -p kraal-guest --target x86_64-unknown-linux-musl`".into(),
        })?;
        for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
            if which(tool).is_none() {
                return Err(ImageError::MissingTool {
                    program: tool.into(),
                    hint: " (the microVM kernel comes from Debian's linux-image-cloud-amd64)"
                        .into(),
                });
            }
        }
        let guest = std::fs::read(&guest_path).map_err(io(&guest_path))?;
        let report = crate::reporter(progress, 2);
        let show = Cmd::new("apt-cache")
            .args(["show", "--no-all-versions", KERNEL_PACKAGE])
            .timeout(Duration::from_secs(60))
            .run()
            .await
            .map_err(|source| ImageError::Build {
                name: "kernel".into(),
                step: "apt-cache show",
                source,
            })?;
        let (package, version) =
            parse_apt_show(&show.stdout_str()).ok_or_else(|| ImageError::Recipe {
                recipe: "kernel".into(),
                message: format!(
                    "`apt-cache show {KERNEL_PACKAGE}` names no kernel package; is the Debian main archive in the apt sources?"
                ),
            })?;
        let key = serde_json::json!({
            "rev": KERNEL_REVISION, "package": package, "version": version,
            "guest": short_hash(&guest), "modules": MODULES,
        });
        let hash = short_hash(key.to_string().as_bytes());
        let root = self.kernels_dir();
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let dir = root.join(format!("{package}-{hash}"));
        let lock = crate::lock(root.join(format!(".{hash}.lock"))).await?;
        if let Some(k) = Self::load_kernel(&dir) {
            report(1, "kernel", format!("cached ({package} {version})"), true);
            report(2, "initramfs", "cached".into(), true);
            crate::prune::mark_used(&dir);
            drop(lock);
            Self::prune_kernels(&root, &format!("{package}-{hash}"));
            return Ok(k);
        }
        let tmp = root.join(format!(".tmp-{hash}"));
        remove_any(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let r = self
            .build_kernel(&tmp, &package, &version, &guest, &report)
            .await;
        let r = match r {
            Ok(()) => {
                remove_any(&dir);
                std::fs::rename(&tmp, &dir).map_err(io(&dir))
            }
            Err(e) => Err(e),
        };
        if r.is_err() {
            remove_any(&tmp);
        }
        r?;
        drop(lock);
        Self::prune_kernels(&root, &format!("{package}-{hash}"));
        Self::load_kernel(&dir).ok_or_else(|| ImageError::NotFound(dir.display().to_string()))
    }

    async fn build_kernel(
        &self,
        tmp: &Path,
        package: &str,
        version: &str,
        guest: &[u8],
        report: &(dyn Fn(u32, &str, String, bool) + Send + Sync),
    ) -> Result<(), ImageError> {
        let build = |step: &'static str| {
            move |source| ImageError::Build {
                name: "kernel".into(),
                step,
                source,
            }
        };
        report(
            1,
            "kernel",
            format!("downloading {package} {version}"),
            false,
        );
        let dl = tmp.join("download");
        std::fs::create_dir_all(&dl).map_err(io(&dl))?;
        Cmd::new("apt-get")
            .args(["download", "-q", &format!("{package}={version}")])
            .cwd(&dl)
            .timeout(Duration::from_secs(600))
            .run()
            .await
            .map_err(build("apt-get download"))?;
        let deb = std::fs::read_dir(&dl)
            .map_err(io(&dl))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| ImageError::NotFound(format!("{package}.deb in {}", dl.display())))?;
        let x = tmp.join("x");
        Cmd::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&x)
            .timeout(Duration::from_secs(300))
            .run()
            .await
            .map_err(build("dpkg-deb -x"))?;
        let boot = x.join("boot");
        let vmlinuz = std::fs::read_dir(&boot)
            .map_err(io(&boot))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .ok_or_else(|| ImageError::NotFound(format!("vmlinuz in {package}")))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_owned();
        std::fs::rename(&vmlinuz, tmp.join("vmlinuz")).map_err(io(&vmlinuz))?;
        let bz = std::fs::read(tmp.join("vmlinuz")).map_err(io(tmp))?;
        match extract_vmlinux(&bz) {
            Ok(elf) => std::fs::write(tmp.join("vmlinux"), elf).map_err(io(tmp))?,
            // QEMU boots the bzImage; only Firecracker needs this.
            Err(e) => tracing::warn!("no vmlinux for Firecracker from {package}: {e}"),
        }
        report(1, "kernel", format!("{package} {version}"), true);

        report(2, "initramfs", "guest agent and modules".into(), false);
        let modules_tree = x.join("lib/modules").join(&release);
        let index = index_modules(&modules_tree);
        let read = |m: &str| -> Result<Vec<u8>, String> {
            let p = index
                .get(m)
                .ok_or_else(|| format!("module {m} is not in {package}"))?;
            std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let order =
            load_order(MODULES, &|m| read(m).map(|ko| module_depends(&ko))).map_err(|message| {
                ImageError::Recipe {
                    recipe: "kernel".into(),
                    message,
                }
            })?;
        let mut mods = Vec::new();
        for m in &order {
            let data = read(m).map_err(|message| ImageError::Recipe {
                recipe: "kernel".into(),
                message,
            })?;
            mods.push((m.clone(), data));
        }
        let cpio = initramfs(guest, &mods).map_err(io(tmp))?;
        let initrd = tmp.join("initramfs.cpio");
        std::fs::write(&initrd, cpio).map_err(io(&initrd))?;
        remove_any(&x);
        remove_any(&dl);
        let meta = Kernel {
            package: format!("{package} {version}"),
            release,
            dir: PathBuf::new(),
            vmlinuz: PathBuf::new(),
            initramfs: PathBuf::new(),
            vmlinux: None,
        };
        let mj = tmp.join("kernel.json");
        std::fs::write(&mj, serde_json::to_vec_pretty(&meta).expect("serializes"))
            .map_err(io(&mj))?;
        report(2, "initramfs", format!("{} modules", mods.len()), true);
        let done = tmp.join("complete");
        std::fs::write(&done, b"").map_err(io(&done))?;
        Ok(())
    }

    fn load_kernel(dir: &Path) -> Option<Kernel> {
        if !dir.join("complete").is_file() {
            return None;
        }
        let mut k: Kernel =
            serde_json::from_slice(&std::fs::read(dir.join("kernel.json")).ok()?).ok()?;
        k.dir = dir.to_owned();
        k.vmlinuz = dir.join("vmlinuz");
        k.initramfs = dir.join("initramfs.cpio");
        k.vmlinux = Some(dir.join("vmlinux")).filter(|p| p.is_file());
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmlinux_extraction_refuses_what_is_not_a_bzimage() {
        assert!(extract_vmlinux(b"short").unwrap_err().contains("bzImage"));
        let mut fake = vec![0u8; 0x300];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x24c] = 0xff; // A payload far beyond the end.
        assert!(
            extract_vmlinux(&fake)
                .unwrap_err()
                .contains("outside the file")
        );
    }

    #[test]
    fn apt_show_names_the_versioned_kernel() {
        let text = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n\nPackage: linux-image-cloud-amd64\nVersion: 6.1.1-1\nDepends: old\n";
        assert_eq!(
            parse_apt_show(text),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                "6.1.192-2".into()
            ))
        );
        assert_eq!(parse_apt_show("Package: x\n"), None);
    }

    #[test]
    fn modules_load_after_their_dependencies_once() {
        let deps = |m: &str| -> Result<Vec<String>, String> {
            Ok(match m {
                "virtio_net" => vec!["net_failover".into()],
                "net_failover" => vec!["failover".into()],
                "virtio_blk" | "failover" => vec![],
                "a" => vec!["b".into()],
                "b" => vec!["a".into()],
                other => return Err(format!("module {other} is missing")),
            })
        };
        assert_eq!(
            load_order(&["virtio-net", "virtio_blk", "failover"], &deps).unwrap(),
            ["failover", "net_failover", "virtio_net", "virtio_blk"]
        );
        assert!(load_order(&["a"], &deps).unwrap_err().contains("cycle"));
        assert!(load_order(&["zz"], &deps).unwrap_err().contains("zz"));
    }

    #[test]
    fn modinfo_depends_are_read_from_the_module() {
        let ko = b"\x7fELF....license=GPL\0depends=virtio,virtio_ring\0intree=Y\0";
        assert_eq!(module_depends(ko), ["virtio", "virtio_ring"]);
        assert!(module_depends(b"depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }

    #[test]
    fn the_initramfs_is_a_newc_archive_with_init_and_modules() {
        let data = initramfs(b"#!guest", &[("virtio".into(), b"ko".to_vec())]).unwrap();
        let mut rest: &[u8] = &data;
        let mut seen = Vec::new();
        loop {
            let r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            seen.push((e.name().to_owned(), e.mode(), e.rdev_major(), e.file_size()));
            rest = r.finish().unwrap();
        }
        assert!(seen.contains(&("init".into(), 0o100755, 0, 7)));
        assert!(seen.contains(&("dev/console".into(), 0o020600, 5, 0)));
        assert!(seen.contains(&("lib/modules/virtio.ko".into(), 0o100644, 0, 2)));
        assert!(seen.contains(&("lib/modules/load-order".into(), 0o100644, 0, 7)));
        let dev = seen.iter().position(|e| e.0 == "dev").unwrap();
        let console = seen.iter().position(|e| e.0 == "dev/console").unwrap();
        assert!(dev < console, "parents come first");
    }
}
