//! Project automation, run as `cargo xtask <task>`:
//!
//! * `openapi` — regenerate `docs/openapi.json` from the server's route annotations;
//! * `tidy` — no source file over 900 lines, no test that asserts nothing (also a test);
//! * `bench` — the benchmark suite (root, runsc, QEMU): every measurement next to its raw
//!   baseline in the same run, sections `create` (gVisor create → first exec, 20 and 100
//!   at once, vs raw `runsc run`), `memory` (idle workspaces: memory each, how many fit),
//!   `vm` (QEMU boot vs a bare boot, resume from checkpoint vs cold create), `events`
//!   (100 sessions, 500 subscribers, vs raw pipes), `backup` (vs `cp -a`), `egress`
//!   (proxy vs direct); one table, JSON and an SVG chart.

mod bench;
mod bench_backup;
mod bench_bundle;
mod bench_checkpoint;
mod bench_create;
mod bench_egress;
mod bench_events;
mod bench_memory;
mod bench_tasks;
mod bench_vm;
mod report;
mod tidy;

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("openapi") => {
            let path = root().join("docs/openapi.json");
            std::fs::write(&path, kraal_server::openapi_json())?;
            println!("wrote {}", path.display());
            Ok(())
        }
        Some("bench") => bench::run(&args[1..]),
        Some("tidy") => {
            let problems = tidy::check(&root())?;
            for p in &problems {
                eprintln!("{p}");
            }
            if !problems.is_empty() {
                anyhow::bail!("{} tidy problem(s)", problems.len());
            }
            println!(
                "tidy: no source file over {} lines, every test asserts",
                tidy::MAX_LINES
            );
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <openapi | tidy | bench [--only create,memory,vm,events,backup,egress,tasks] [--publish] [--iterations N] [--concurrent 20,100] [--max-idle N] [--max-create-secs S] [--accel tcg|kvm] [--sessions N] [--workspaces N] [--subscribers N] [--events N] [--rate N] [--burst N] [--runs N] [--egress-iterations N] [--tasks N]>"
            );
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::root;

    /// The repository is tidy: see `tidy.rs`.
    #[test]
    fn no_long_files_and_no_tests_that_assert_nothing() {
        let problems = crate::tidy::check(&root()).unwrap();
        assert!(
            problems.is_empty(),
            "cargo xtask tidy:\n{}",
            problems.join("\n")
        );
    }

    /// The committed OpenAPI document matches the code (`cargo xtask openapi` refreshes it).
    #[test]
    fn openapi_document_is_current() {
        let committed = std::fs::read_to_string(root().join("docs/openapi.json"))
            .expect("docs/openapi.json exists");
        assert!(
            committed == kraal_server::openapi_json(),
            "docs/openapi.json is stale: run `cargo xtask openapi`"
        );
    }

    /// kraal crate → its kraal dependencies (normal, not dev).
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        #[allow(clippy::disallowed_methods)]
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(root())
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut g = BTreeMap::new();
        for p in v["packages"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap().to_owned();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            g.insert(name, deps);
        }
        g
    }

    fn kraal_deps(g: &BTreeMap<String, BTreeSet<String>>, krate: &str) -> BTreeSet<String> {
        g[krate]
            .iter()
            .filter(|d| d.starts_with("kraal"))
            .cloned()
            .collect()
    }

    /// The invariants written in ARCHITECTURE.md, checked against the real dependency graph.
    #[test]
    fn dependency_invariants_hold() {
        let g = graph();
        let backends = ["kraal-gvisor", "kraal-vm", "kraal-kube"];
        let none: BTreeSet<String> = BTreeSet::new();

        // kraal-core is pure vocabulary and kraal-metrics pure handles (every layer records
        // into them): no kraal crate, no async runtime, no IO crates.
        for pure in ["kraal-core", "kraal-metrics"] {
            assert_eq!(kraal_deps(&g, pure), none, "{pure}");
            for io in ["tokio", "rusqlite", "axum", "hyper", "nix"] {
                assert!(!g[pure].contains(io), "{pure} must not depend on {io}");
            }
        }
        // The wire protocol knows only the vocabulary, so the guest stays small.
        assert_eq!(
            kraal_deps(&g, "kraal-protocol"),
            BTreeSet::from(["kraal-core".to_owned()])
        );
        // The guest agent knows the protocol and runs the (pure) agent adapters; it never
        // links host-side crates (sandbox, store, engine, server).
        assert_eq!(
            kraal_deps(&g, "kraal-guest"),
            BTreeSet::from([
                "kraal-agents".to_owned(),
                "kraal-core".to_owned(),
                "kraal-protocol".to_owned()
            ])
        );
        // Backends never depend on each other, nor on the engine, server, store or API.
        for b in backends {
            for forbidden in backends.iter().copied().chain([
                "kraal-engine",
                "kraal-server",
                "kraal-store",
                "kraal-api",
            ]) {
                if forbidden != b {
                    assert!(
                        !g[b].contains(forbidden),
                        "{b} must not depend on {forbidden}"
                    );
                }
            }
        }
        // Only the binary names concrete backends.
        for (krate, deps) in &g {
            if krate != "kraal" {
                for b in backends {
                    assert!(
                        !deps.contains(b),
                        "only the kraal binary may depend on {b}, but {krate} does"
                    );
                }
            }
        }
        // The engine has no HTTP (host services reach it through the `LinkServices`
        // trait); the API types are never database rows.
        for http in [
            "axum",
            "hyper",
            "reqwest",
            "kraal-server",
            "kraal-api",
            "kraal-proxy",
        ] {
            assert!(
                !g["kraal-engine"].contains(http),
                "kraal-engine must not depend on {http}"
            );
        }
        assert!(
            !g["kraal-api"].contains("kraal-store"),
            "kraal-api must not depend on kraal-store"
        );
        // Adapters are pure: they spawn nothing and do no IO.
        for f in [
            "tokio",
            "nix",
            "kraal-sandbox",
            "kraal-store",
            "kraal-engine",
        ] {
            assert!(
                !g["kraal-agents"].contains(f),
                "kraal-agents must not depend on {f}"
            );
        }
        // Test support stays out of every shipped crate.
        for (krate, deps) in &g {
            assert!(
                !deps.contains("kraal-testkit"),
                "{krate} depends on kraal-testkit outside dev-dependencies"
            );
        }
        // Tasks sit on top of the engine; the engine and everything under it know nothing of them.
        for krate in ["kraal-engine", "kraal-store", "kraal-core", "kraal-sandbox"] {
            assert!(
                !g[krate].contains("kraal-tasks"),
                "{krate} must not depend on kraal-tasks"
            );
        }
        // The sandbox layer (trait, guest client) does not know the state store or the server.
        for f in ["kraal-store", "kraal-engine", "kraal-server"] {
            assert!(
                !g["kraal-sandbox"].contains(f),
                "kraal-sandbox must not depend on {f}"
            );
        }
    }

    /// The CLI side of the binary talks to the daemon only over its API.
    #[test]
    fn cli_never_touches_the_database_or_engine() {
        for f in [
            "client.rs",
            "autostart.rs",
            "commands.rs",
            "exec.rs",
            "chat.rs",
            "render.rs",
            "secure.rs",
            "ssh.rs",
            "backups.rs",
            "contexts.rs",
            "review.rs",
            "tasks.rs",
            "task_sources.rs",
            "budget.rs",
        ] {
            let src = std::fs::read_to_string(root().join("crates/kraal/src").join(f)).unwrap();
            for forbidden in ["kraal_store", "kraal_engine", "kraal_gvisor", "kraal_vm"] {
                assert!(
                    !src.contains(forbidden),
                    "crates/kraal/src/{f} uses {forbidden}"
                );
            }
        }
    }

    /// Every source file opens with a `//!` line saying what it is for.
    #[test]
    fn every_rust_file_has_a_purpose_line() {
        let mut missing = Vec::new();
        let mut stack = vec![root().join("crates"), root().join("xtask")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n != "target") {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    if !text.starts_with("//!") {
                        missing.push(p.display().to_string());
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "files without a //! header: {missing:?}"
        );
    }
}
