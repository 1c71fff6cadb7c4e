//! The deployment files (`docker-compose.yml`, `deploy/`), checked without a
//! container engine or a cluster, for the mistakes that otherwise surface
//! only at deploy time:
//!
//! - **Schemas.** Every Kubernetes manifest under `deploy/k8s` (all but
//!   `kustomization.yaml`) validates, in strict mode (an unknown or misplaced
//!   field is an error), against the Kubernetes 1.30 and 1.37 API schemas
//!   with `kubernetes-validate`; `docker-compose.yml` validates against the
//!   Compose Specification schema (`check-jsonschema`'s builtin
//!   `vendor.compose-spec`). Both come from PyPI at the versions pinned in
//!   `deploy/validate-requirements.txt`, installed into `target/deploy-venv`
//!   on first use (`support::venv`; so the test needs `python3` with `venv`,
//!   and PyPI once).
//!   And `kustomization.yaml` lists every manifest, so none is left out of
//!   `kubectl apply -k`.
//! - **Environment variables.** The binary ignores a variable it does not
//!   know, so a misspelt or stale name in a deployment file would silently
//!   fall back to a default. Every `SWITCHBOARD_*`, `NATS_*`, `OTEL_*` or
//!   `RUST_LOG` name the files mention outside comments must be one that
//!   `switchboard <role> --help` lists as `[env: NAME…]` for some role
//!   (`RUST_LOG`, the log filter, is allowed as such).
//! - **Health checks.** The `switchboard probe grpc|http` subcommands that
//!   the compose health checks call exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

mod support;
use support::venv::{Venv, printed, root, run};

const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");
const ROLES: [&str; 5] = ["all", "edge", "session", "detection", "statistics"];
/// The oldest Kubernetes the manifests support (native gRPC probes, the
/// preStop `sleep` action) and the newest schema kubernetes-validate has.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// The validators, from PyPI: kubernetes-validate and check-jsonschema.
const VALIDATORS: Venv = Venv {
    dir: "target/deploy-venv",
    requirements: "deploy/validate-requirements.txt",
    imports: &["kubernetes_validate", "check_jsonschema"],
    what: "the validators",
};
const KUSTOMIZATION: &str = "kustomization.yaml";

/// Every `.yaml`/`.yml` file under `deploy/k8s`, relative to the repository
/// root, sorted.
fn k8s_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml")
            {
                files.push(path.strip_prefix(root()).unwrap().to_path_buf());
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy/k8s"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/k8s");
    files
}

/// The Kubernetes resources: every file under `deploy/k8s` but the
/// kustomizations.
fn k8s_manifests() -> Vec<PathBuf> {
    k8s_files()
        .into_iter()
        .filter(|path| !path.ends_with(KUSTOMIZATION))
        .collect()
}

#[tokio::test]
async fn manifests_match_their_schemas() {
    let python = VALIDATORS.python().await;

    let manifests = k8s_manifests();
    let mut command = Command::new(&python);
    command.args(["-m", "kubernetes_validate", "--strict"]);
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    command.args(&manifests);
    let output = run(
        &mut command,
        "kubernetes-validate",
        Duration::from_secs(300),
    )
    .await;
    let report = String::from_utf8_lossy(&output.stdout);
    // Anything but INFO is a problem: ERROR (invalid), FATAL, and also WARN,
    // which is how kubernetes-validate reports a kind/apiVersion it has no
    // schema for (a typo such as `apps/v2`) while still exiting 0.
    let problems: Vec<&str> = report
        .lines()
        .filter(|line| !line.starts_with("INFO "))
        .collect();
    assert!(
        output.status.success() && problems.is_empty(),
        "kubernetes-validate rejected the manifests under deploy/k8s:\n{}\n{}",
        problems.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    for manifest in &manifests {
        for version in KUBERNETES_VERSIONS {
            let minor = version.rsplit_once('.').unwrap().0;
            let passed = format!("INFO {} passed for resource ", manifest.display());
            let against = format!(" against version {minor}");
            assert!(
                report
                    .lines()
                    .any(|line| line.starts_with(&passed) && line.ends_with(&against)),
                "{} validated no resource against Kubernetes {minor}:\n{report}",
                manifest.display()
            );
        }
    }

    let output = run(
        Command::new(&python).args([
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ]),
        "check-jsonschema",
        Duration::from_secs(120),
    )
    .await;
    assert!(
        output.status.success(),
        "docker-compose.yml does not match the Compose Specification:\n{}",
        printed(&output)
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let path = root().join("deploy/k8s").join(KUSTOMIZATION);
    let text = std::fs::read_to_string(&path).unwrap();
    // The `resources:` block: `  - file.yaml` lines up to the next key.
    let listed: BTreeSet<String> = text
        .lines()
        .skip_while(|line| !line.starts_with("resources:"))
        .skip(1)
        .map(|line| strip_comment(line).trim())
        .filter(|line| !line.is_empty())
        .take_while(|line| line.starts_with("- "))
        .map(|line| line[2..].trim().to_owned())
        .collect();
    // (Overlays in subdirectories would have kustomizations of their own.)
    let manifests: BTreeSet<String> = k8s_manifests()
        .iter()
        .filter(|path| path.parent() == Some(Path::new("deploy/k8s")))
        .map(|path| {
            path.strip_prefix("deploy/k8s")
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        listed, manifests,
        "deploy/k8s/{KUSTOMIZATION} `resources:` must list exactly the manifests in deploy/k8s"
    );
}

/// Every `[env: NAME=…]` (or `[env: NAME]`, for hidden values) in the help
/// of every role, plus RUST_LOG.
fn variables_the_binary_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::from(["RUST_LOG".to_owned()]);
    for role in ROLES {
        let output = std::process::Command::new(SWITCHBOARD)
            .args([role, "--help"])
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success(), "switchboard {role} --help failed");
        // Whitespace collapsed, in case the help is wrapped inside `[env: …]`.
        let help = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for (_, rest) in help
            .match_indices("[env: ")
            .map(|(at, _)| help.split_at(at + 6))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                !name.is_empty(),
                "unexpected `[env: ` in switchboard {role} --help"
            );
            names.insert(name);
        }
    }
    names
}

/// A `#` at the start of a line or after whitespace opens a comment (YAML,
/// Dockerfile); the deployment files put none inside a value.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    match (0..bytes.len())
        .find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
    {
        Some(at) => &line[..at],
        None => line,
    }
}

/// The names in `text`, outside comments, that look like the binary's
/// variables: as keys (`NAME: value`, compose and ConfigMaps), list entries
/// (`- name: NAME`, `- NAME=value`), `ENV NAME=value` or `${NAME}` alike.
fn variables_mentioned(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(strip_comment)
        .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| {
            *word == "RUST_LOG"
                || ["SWITCHBOARD_", "NATS_", "OTEL_"]
                    .iter()
                    .any(|prefix| word.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn environment_variables_are_ones_the_binary_reads() {
    let known = variables_the_binary_reads();
    let mut files = vec![
        PathBuf::from("docker-compose.yml"),
        PathBuf::from("deploy/Dockerfile"),
    ];
    files.extend(k8s_files());

    let mut unknown = Vec::new();
    let mut compose = BTreeSet::new();
    let mut kubernetes = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        let mentioned = variables_mentioned(&text);
        for name in &mentioned {
            if !known.contains(name) {
                unknown.push(format!("{}: {name}", file.display()));
            }
        }
        if file.starts_with("deploy/k8s") {
            kubernetes.extend(mentioned);
        } else if file.ends_with("docker-compose.yml") {
            compose = mentioned;
        }
    }
    assert!(
        unknown.is_empty(),
        "variables the binary does not read (`switchboard <role> --help` lists those it \
         does):\n  {}\nknown: {known:?}",
        unknown.join("\n  ")
    );

    // The scan sees the settings every deployment needs (a guard against a
    // scan that finds nothing, and against a deployment that forgets them).
    for needed in [
        "NATS_URL",
        "SWITCHBOARD_SESSION_URL",
        "SWITCHBOARD_DETECTION_URL",
        "SWITCHBOARD_STATISTICS_URL",
        "SWITCHBOARD_JWT_SECRET",
        "SWITCHBOARD_DRAIN_TIMEOUT_SECS",
        "SWITCHBOARD_LOG_FORMAT",
    ] {
        assert!(
            compose.contains(needed),
            "docker-compose.yml does not set {needed}"
        );
        assert!(
            kubernetes.contains(needed),
            "deploy/k8s does not set {needed}"
        );
    }
}

#[test]
fn the_health_check_probes_exist() {
    for kind in ["grpc", "http"] {
        let output = std::process::Command::new(SWITCHBOARD)
            .args(["probe", kind, "--help"])
            .env_clear()
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "`switchboard probe {kind}` (used by docker-compose.yml's health checks) is \
             missing:\n{}",
            printed(&output)
        );
    }
}

/// The tokio worker threads a role runs, as it logs them at start.
fn logged_worker_threads(role: &support::Switchboard) -> u64 {
    role.wait_logged("runtime started");
    role.lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|log| log["message"] == "runtime started")
        .and_then(|log| log["worker_threads"].as_u64())
        .expect("a worker_threads figure")
}

/// Threads in `pid` that tokio named as its own (workers, and blocking
/// threads when any run).
fn tokio_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the role's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("tokio-rt-worker"))
        .count()
}

/// `--worker-threads` (and its variable) sizes a role's runtime; without
/// it a role runs one worker per CPU it may use.
#[test]
fn a_role_runs_the_worker_threads_it_is_given() {
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    for (flag, variable, expected) in [
        (Some("1"), None, 1),
        (None, Some("3"), 3),
        (None, None, cpus),
    ] {
        let mut args = vec!["detection", "--grpc-addr", "127.0.0.1:0"];
        if let Some(threads) = flag {
            args.extend(["--worker-threads", threads]);
        }
        let env: Vec<(&str, &str)> = variable
            .map(|threads| ("SWITCHBOARD_WORKER_THREADS", threads))
            .into_iter()
            .collect();
        let detection = support::Switchboard::start_with_env(&args, &env);
        detection.addr("detection");
        assert_eq!(
            logged_worker_threads(&detection),
            expected,
            "flag {flag:?}, variable {variable:?}"
        );
        // The threads are really there (blocking threads share the name, so
        // at least as many). A thread names itself once it runs, which on a
        // busy machine may come after the role listens: waited for, bounded.
        let named_by = std::time::Instant::now() + Duration::from_secs(20);
        while (tokio_threads(detection.pid()) as u64) < expected {
            assert!(
                std::time::Instant::now() < named_by,
                "{} tokio threads, expected {expected}",
                tokio_threads(detection.pid())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        std::process::Command::new(SWITCHBOARD)
            .args(["detection", "--worker-threads", "0"])
            .env_clear()
            .output()
            .unwrap()
            .status
            .code(),
        Some(2),
        "0 threads is refused as a usage error"
    );
}
