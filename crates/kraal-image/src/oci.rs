//! The OCI output: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) with one gzip layer per kraal layer, ready for `skopeo copy` to a
//! registry that Kubernetes nodes pull from. Also the layer tar writer (overlayfs
//! whiteouts become OCI `.wh.` entries) and layer unpacking (whiteouts applied).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Image, ImageError, io};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The tag `kraal image build` gives the image in its layout.
pub const REF_NAME: &str = "latest";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A writer that hashes and counts what passes through.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// `sha256:<hex>`, the byte count and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.len,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the tree at `root` as a layer tar into `w`: entries sorted by name, owners and
/// modes kept, hard links as links, device nodes left out (runtimes provide /dev) except
/// overlayfs whiteouts (0/0 character devices), which become `.wh.<name>`, and opaque
/// directories, which get a `.wh..wh..opq` entry.
pub fn write_layer_tar<W: Write>(root: &Path, w: W) -> std::io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for e in walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
    {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(root).expect("under root").to_owned();
        let m = e.path().symlink_metadata()?;
        let ft = m.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        if ft.is_char_device() && m.rdev() == 0 {
            let name = format!(".wh.{}", rel.file_name().unwrap().to_string_lossy());
            let wh = rel.with_file_name(name);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o644);
            h.set_mtime(m.mtime().max(0) as u64);
            b.append_data(&mut h, &wh, std::io::empty())?;
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_socket() {
            continue;
        } else if ft.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty())?;
            if is_opaque(e.path()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                h.set_mode(0o644);
                b.append_data(&mut h, rel.join(".wh..wh..opq"), std::io::empty())?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            h.set_size(0);
            b.append_link(&mut h, &rel, &target)?;
        } else if ft.is_fifo() {
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty())?;
        } else if m.nlink() > 1 && links.contains_key(&(m.dev(), m.ino())) {
            let first = &links[&(m.dev(), m.ino())];
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, &rel, first)?;
        } else {
            if m.nlink() > 1 {
                links.insert((m.dev(), m.ino()), rel.clone());
            }
            let f = std::fs::File::open(e.path())?;
            b.append_data(&mut h, &rel, f)?;
        }
    }
    b.into_inner()
}

fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the size given.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Where a blob lives in a layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn write_blob(layout: &Path, data: &[u8]) -> Result<(String, u64), ImageError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    let p = blob_path(layout, &digest);
    std::fs::write(&p, data).map_err(io(&p))?;
    Ok((digest, data.len() as u64))
}

/// One layer as a gzip blob: (digest, size, diff id).
fn layer_blob(layout: &Path, dir: &Path, n: usize) -> Result<(String, u64, String), ImageError> {
    let tmp = layout.join(format!("blobs/sha256/.layer-{n}"));
    let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let outer = HashWriter::new(std::io::BufWriter::new(f));
    let gz = flate2::write::GzEncoder::new(outer, flate2::Compression::fast());
    let inner = HashWriter::new(gz);
    let inner = write_layer_tar(dir, inner).map_err(io(dir))?;
    let (diff_id, _, gz) = inner.finish();
    let outer = gz.finish().map_err(io(&tmp))?;
    let (digest, size, mut bw) = outer.finish();
    bw.flush().map_err(io(&tmp))?;
    std::fs::rename(&tmp, blob_path(layout, &digest)).map_err(io(&tmp))?;
    Ok((digest, size, diff_id))
}

/// Writes the image's OCI layout to `out` (atomically).
pub fn build(img: &Image, out: &Path) -> Result<(), ImageError> {
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let res = build_into(img, &tmp);
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return res;
    }
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&tmp, out).map_err(io(out))
}

fn build_into(img: &Image, tmp: &Path) -> Result<(), ImageError> {
    let blobs = tmp.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    std::fs::write(tmp.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io(tmp))?;
    // Layers compress in parallel.
    let results: Vec<Result<(String, u64, String), ImageError>> = std::thread::scope(|s| {
        let handles: Vec<_> = img
            .layers
            .iter()
            .enumerate()
            .map(|(n, l)| s.spawn(move || layer_blob(tmp, &l.dir, n)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("layer writer does not panic"))
            .collect()
    });
    let layers = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut env = vec![format!("PATH={PATH}")];
    env.extend(img.config.env.iter().map(|(k, v)| format!("{k}={v}")));
    let ports: serde_json::Map<String, serde_json::Value> = img
        .config
        .ports
        .iter()
        .map(|p| (format!("{p}/tcp"), json!({})))
        .collect();
    let config = json!({
        "created": img.built_at,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": env,
            "Entrypoint": ["/.kraal/kraal-guest"],
            "WorkingDir": "/workspace",
            "ExposedPorts": ports,
            "Labels": {
                "io.kraal.image.name": img.name,
                "io.kraal.image.hash": img.hash,
                "io.kraal.image.start": serde_json::to_string(&img.config.start).expect("json"),
            },
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>(),
        },
        "history": img.layers.iter().map(|l| json!({
            "created": img.built_at,
            "created_by": format!("kraal layer {}-{}", l.kind, l.hash),
        })).collect::<Vec<_>>(),
    });
    let (cdigest, csize) = write_blob(tmp, &serde_json::to_vec(&config).expect("json"))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": cdigest, "size": csize},
        "layers": layers.iter().map(|(d, s, _)| json!({
            "mediaType": MEDIA_LAYER_GZIP, "digest": d, "size": s,
        })).collect::<Vec<_>>(),
        "annotations": {
            "org.opencontainers.image.title": img.name,
            "org.opencontainers.image.description": img.recipe.description,
            "org.opencontainers.image.created": img.built_at,
        },
    });
    let (mdigest, msize) = write_blob(tmp, &serde_json::to_vec(&manifest).expect("json"))?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": mdigest,
            "size": msize,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": REF_NAME},
        }],
    });
    std::fs::write(
        tmp.join("index.json"),
        serde_json::to_vec_pretty(&index).expect("json"),
    )
    .map_err(io(tmp))
}

/// Unpacks a layer tar (gzip or plain, detected) onto `dest`, applying OCI whiteouts:
/// `.wh.<name>` deletes `<name>`, `.wh..wh..opq` empties its directory first. Paths that
/// would leave `dest` are refused.
pub fn unpack_layer<R: Read>(r: R, dest: &Path) -> std::io::Result<()> {
    let mut r = std::io::BufReader::new(r);
    let gz = {
        use std::io::BufRead;
        let head = r.fill_buf()?;
        head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
    };
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let mut a = tar::Archive::new(reader);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    a.set_overwrite(true);
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::other(format!(
                "layer entry {} leaves the root",
                path.display()
            )));
        }
        // Deletions follow no symbolic link an earlier layer planted in a parent.
        let check_parents = || -> std::io::Result<()> {
            let mut at = dest.to_path_buf();
            for c in path.parent().into_iter().flat_map(Path::components) {
                at.push(c);
                if at
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Err(std::io::Error::other(format!(
                        "layer entry {} deletes through the symbolic link {}",
                        path.display(),
                        at.strip_prefix(dest).unwrap_or(&at).display()
                    )));
                }
            }
            Ok(())
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == ".wh..wh..opq" {
            check_parents()?;
            let dir = dest.join(path.parent().unwrap_or(Path::new("")));
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
            }
            continue;
        }
        if let Some(victim) = name.strip_prefix(".wh.") {
            check_parents()?;
            let p = dest.join(path.with_file_name(victim));
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)?;
            } else if p.symlink_metadata().is_ok() {
                std::fs::remove_file(&p)?;
            }
            continue;
        }
        // A file replacing a directory (or the reverse) in a later layer.
        let target = dest.join(&path);
        if let Ok(m) = target.symlink_metadata() {
            check_parents()?;
            let is_dir_entry = entry.header().entry_type().is_dir();
            if m.is_dir() && !is_dir_entry {
                std::fs::remove_dir_all(&target)?;
            } else if !m.is_dir() && is_dir_entry {
                std::fs::remove_file(&target)?;
            }
        }
        if !entry.unpack_in(dest)? {
            return Err(std::io::Error::other(format!(
                "layer entry {} leaves the root",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_round_trip_with_links_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        // Lower layer, unpacked first.
        let lower = d.path().join("lower");
        std::fs::create_dir_all(lower.join("etc/old")).unwrap();
        std::fs::write(lower.join("etc/old/a"), "a").unwrap();
        std::fs::write(lower.join("etc/gone"), "x").unwrap();
        std::fs::create_dir_all(lower.join("opaque")).unwrap();
        std::fs::write(lower.join("opaque/hidden"), "h").unwrap();
        // Upper layer as overlayfs leaves it: a whiteout device and an opaque dir.
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("opaque")).unwrap();
        std::fs::write(upper.join("opaque/new"), "n").unwrap();
        std::fs::write(upper.join("etc/f"), "f").unwrap();
        std::fs::hard_link(upper.join("etc/f"), upper.join("etc/f2")).unwrap();
        std::os::unix::fs::symlink("f", upper.join("etc/l")).unwrap();
        nix::sys::stat::mknod(
            &upper.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let c = std::ffi::CString::new(upper.join("opaque").to_str().unwrap()).unwrap();
        // SAFETY: valid C strings.
        let set = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(set, 0, "root can set trusted xattrs");

        let tar_lower = write_layer_tar(&lower, Vec::new()).unwrap();
        let tar_upper = write_layer_tar(&upper, Vec::new()).unwrap();
        let names: Vec<String> = tar::Archive::new(&tar_upper[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"etc/.wh.gone".to_owned()), "{names:?}");
        assert!(
            names.contains(&"opaque/.wh..wh..opq".to_owned()),
            "{names:?}"
        );

        let out = d.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        unpack_layer(&tar_lower[..], &out).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_upper).unwrap();
        unpack_layer(&gz.finish().unwrap()[..], &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("etc/old/a")).unwrap(), "a");
        assert!(!out.join("etc/gone").exists(), "whiteout applied");
        assert!(
            !out.join("opaque/hidden").exists(),
            "opaque dir hides the lower files"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("opaque/new")).unwrap(),
            "n"
        );
        assert_eq!(
            std::fs::read_link(out.join("etc/l")).unwrap(),
            Path::new("f")
        );
        let m1 = std::fs::metadata(out.join("etc/f")).unwrap();
        let m2 = std::fs::metadata(out.join("etc/f2")).unwrap();
        assert_eq!(m1.ino(), m2.ino(), "hard links stay links");
    }

    #[test]
    fn escaping_entries_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: the builder refuses `..` itself.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = unpack_layer(&data[..], &d.path().join("root")).unwrap_err();
        assert!(e.to_string().contains("leaves the root"), "{e}");
        assert!(!d.path().join("escape").exists());
    }
}
