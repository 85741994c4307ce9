//! Copies the web UI's front-end packages (installed from npm into `web/node_modules` by
//! scripts/setup.sh) into the build directory, so the binary embeds them.

use std::path::Path;

const VENDOR: &[(&str, &str)] = &[
    ("htmx.org/dist/htmx.min.js", "htmx.min.js"),
    ("@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("@xterm/xterm/css/xterm.css", "xterm.css"),
    ("@xterm/addon-fit/lib/addon-fit.js", "addon-fit.js"),
    ("@picocss/pico/css/pico.min.css", "pico.min.css"),
];

fn main() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/node_modules");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("vendor");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/vendor");
    println!("cargo:rerun-if-changed=../../web/package-lock.json");
    for (src, name) in VENDOR {
        let from = modules.join(src);
        println!("cargo:rerun-if-changed={}", from.display());
        if let Err(e) = std::fs::copy(&from, out.join(name)) {
            panic!(
                "the web UI needs {} ({e}); install the front-end packages with scripts/setup.sh (npm install --prefix web)",
                from.display()
            );
        }
    }
}
