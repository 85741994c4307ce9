//! The microVM kernel + initramfs: downloaded with apt, built once, cached by content.

use kraal_image::ImageStore;
use kraal_image::kernel::{LOAD_ORDER, MODULES};

fn guest_bin() -> std::path::PathBuf {
    kraal_sandbox::locate_guest_bin().expect(
        "the static guest agent: cargo build --release -p kraal-guest --target x86_64-unknown-linux-musl",
    )
}

#[tokio::test]
async fn the_cloud_kernel_and_an_initramfs_with_the_guest_are_built_and_cached() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::new(d.path()).with_guest(Some(guest_bin()));
    let steps = std::sync::Mutex::new(Vec::new());
    let k = store
        .ensure_kernel(&|p| steps.lock().unwrap().push((p.title, p.detail, p.done)))
        .await
        .unwrap();
    assert!(
        k.package.starts_with("linux-image-") && k.package.contains("cloud-amd64"),
        "{k:?}"
    );
    let vmlinuz = std::fs::read(&k.vmlinuz).unwrap();
    assert_eq!(
        &vmlinuz[0x202..0x206],
        b"HdrS",
        "a bzImage with the x86 boot header"
    );

    // The initramfs: /init is the guest agent, every wanted module is there with its
    // dependencies listed before it.
    let data = std::fs::read(&k.initramfs).unwrap();
    let mut rest: &[u8] = &data;
    let (mut files, mut order) = (Vec::new(), String::new());
    loop {
        let mut r = cpio::NewcReader::new(rest).unwrap();
        if r.entry().is_trailer() {
            break;
        }
        let name = r.entry().name().to_owned();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut body).unwrap();
        if name == "init" {
            assert_eq!(body, std::fs::read(guest_bin()).unwrap());
        }
        if name == LOAD_ORDER {
            order = String::from_utf8(body).unwrap();
        }
        files.push(name);
        rest = r.finish().unwrap();
    }
    let order: Vec<&str> = order.lines().collect();
    for m in MODULES {
        assert!(order.contains(m), "{m} is loaded: {order:?}");
        assert!(files.contains(&format!("lib/modules/{m}.ko")));
    }
    let pos = |m: &str| order.iter().position(|x| *x == m).unwrap();
    assert!(pos("virtio") < pos("virtio_blk") && pos("virtio_ring") < pos("virtio_mmio"));
    assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));

    // Cached: the second call downloads nothing.
    let t0 = std::time::Instant::now();
    let again = store.ensure_kernel(&|_| {}).await.unwrap();
    assert_eq!(again.dir, k.dir);
    assert!(t0.elapsed().as_secs() < 5);
    assert!(
        steps
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, done)| t == "kernel" && *done)
    );
}
