//! The Kubernetes backend on a real cluster. No Kubernetes API server can be installed
//! from the registries this project builds from, so these tests run only when
//! `KRAAL_TEST_KUBECONFIG` names a kubeconfig, with `KRAAL_TEST_KUBE_IMAGE` (kraal's OCI
//! image, pushed where the cluster pulls from), `KRAAL_TEST_KUBE_REPO` (a git URL the
//! cluster can clone) and optionally `KRAAL_TEST_KUBE_RUNTIME_CLASS` (default `none`);
//! they say that they were skipped otherwise. The controller logic is tested in CI against
//! an in-memory API model (`crates/kraal-kube/src/tests.rs`).

use std::time::Duration;

use crate::harness::*;

struct Cluster {
    kubeconfig: String,
    image: String,
    repo: String,
    runtime_class: String,
}

fn cluster() -> Option<Cluster> {
    let kubeconfig = std::env::var("KRAAL_TEST_KUBECONFIG").ok()?;
    let (Ok(image), Ok(repo)) = (
        std::env::var("KRAAL_TEST_KUBE_IMAGE"),
        std::env::var("KRAAL_TEST_KUBE_REPO"),
    ) else {
        eprintln!(
            "skipped: KRAAL_TEST_KUBECONFIG is set but KRAAL_TEST_KUBE_IMAGE or KRAAL_TEST_KUBE_REPO is not"
        );
        return None;
    };
    Some(Cluster {
        kubeconfig,
        image,
        repo,
        runtime_class: std::env::var("KRAAL_TEST_KUBE_RUNTIME_CLASS")
            .unwrap_or_else(|_| "none".into()),
    })
}

#[test]
fn the_workspace_suite_runs_as_pods_on_a_real_cluster() {
    let Some(c) = cluster() else {
        eprintln!(
            "skipped: set KRAAL_TEST_KUBECONFIG (and KRAAL_TEST_KUBE_IMAGE, KRAAL_TEST_KUBE_REPO) to run it"
        );
        return;
    };
    let d = Daemon::start_with_env(&[
        ("KRAAL_BACKEND", "kubernetes"),
        ("KUBECONFIG", &c.kubeconfig),
        ("KRAAL_KUBE_IMAGE", &c.image),
        ("KRAAL_KUBE_RUNTIME_CLASS", &c.runtime_class),
        ("KRAAL_BOOT_TIMEOUT_SECS", "300"),
    ]);
    let (code, host) = d.http("GET", "/v1/host", b"");
    assert!(code == 200 && host.contains("Kubernetes API"), "{host}");
    let out = d.ok(&["up", &c.repo, "--name", "kube"]);
    assert!(out.contains("workspace kube created and running"), "{out}");
    assert_eq!(d.workspace("kube")["backend"], "kubernetes");
    // The clone ran in the init container; exec streams come through the port-forward.
    let o = d.exec(
        "kube",
        "git status --short --branch && echo out && echo err >&2; exit 3",
    );
    assert_eq!(o.code, Some(3), "{o:?}");
    assert!(
        o.stdout.starts_with("## ") && o.stdout.ends_with("out\n"),
        "{o:?}"
    );
    assert_eq!(o.stderr, "err\n");
    d.ok(&[
        "exec",
        "kube",
        "--",
        "sh",
        "-c",
        "echo kept > /workspace/kept.txt",
    ]);
    // Down deletes the pod and keeps the claim; up brings the file back on a new pod.
    d.ok(&["down", "kube"]);
    assert_eq!(d.workspace("kube")["state"], "stopped");
    d.ok(&["up", "kube"]);
    let o = d.exec("kube", "cat /workspace/kept.txt");
    assert_eq!(o.stdout, "kept\n", "{o:?}");
    // An agent session: Claude Code in the pod, its model requests relayed to the host.
    let o = d.run(&["new-chat", "kube", "-m", "say hello"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("Hello from the cluster."), "{o:?}");
    let env = d.exec("kube", "env | grep -c REALHOSTONLY || true");
    assert_eq!(env.stdout.trim(), "0", "the real key stays on the host");
    // Logs come from the API; rm removes pod, claim and secret.
    let logs = d.ok(&["logs", "kube"]);
    assert!(!logs.is_empty());
    d.ok(&["rm", "kube", "--yes"]);
    wait_until(Duration::from_secs(120), "the workspace removed", || {
        d.workspaces().is_empty()
    });
}
