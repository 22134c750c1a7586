//! `cargo xtask setup`: make a fresh machine ready to build and test.
//!
//! 1. nightly with `rust-src` (the eBPF crate builds `core` itself);
//! 2. `bpf-linker`, built against nightly's own LLVM: the LLVM major version
//!    comes from `rustc +nightly -vV`, and a `lib/libLLVM.so` symlink to the
//!    toolchain's library is the `LLVM_PREFIX` bpf-linker's build links to;
//! 3. the Debian packages the tests and benchmarks drive;
//! 4. the Python packages (PyPI) the interoperability tests read our
//!    Parquet files with: DuckDB (and pytz, which it needs for time zones)
//!    and pyarrow;
//! 5. tools from crates.io: `s3s-fs`, the S3-compatible server the upload
//!    tests run on loopback, and `cargo-deb`, which builds the packages;
//! 6. the npm packages of the test OpenID Provider (`tests/idp`:
//!    `oidc-provider`, pinned by its package-lock.json), with `npm ci` and
//!    the machine's Node.js (from Debian's packages when there is none).
//!
//! Each step checks first and does nothing when already done.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{exec, output, succeeds};

/// Debian packages the tests and benchmarks use, with what needs them.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "network namespaces and veth pairs (ip)"),
    ("nftables", "the nftables baseline of the XDP benchmark"),
    (
        "xdp-tools",
        "xdp-filter and xdp-trafficgen for the XDP benchmark",
    ),
    ("bpftool", "inspecting loaded programs"),
    ("iputils-ping", "reachability checks in namespace tests"),
    ("ethtool", "GRO on the benchmark's veth pair"),
    ("curl", "scraping the admin endpoint in the tests"),
    ("systemd", "systemd-analyze verify of the packaged unit"),
    ("chromium", "the headless browser of the browser tests"),
    (
        "chromium-driver",
        "chromedriver, the WebDriver server the browser tests drive Chromium through",
    ),
];

/// Debian packages for Node.js, installed only when `node` or `npm` is
/// missing: a machine with another Node.js (NodeSource's `nodejs`, which
/// ships npm itself and conflicts with Debian's `npm`) keeps it.
const NODE_PACKAGES: &[(&str, &str)] = &[
    ("nodejs", "runs the test OpenID Provider (tests/idp)"),
    (
        "npm",
        "installs the test OpenID Provider's packages (npm ci)",
    ),
];

/// The oldest Node.js the test OpenID Provider runs on: oidc-provider 9
/// uses `crypto.hash` (Node.js 20.12); it asks for 22 but works on 20.
const NODE_MIN: (u32, u32) = (20, 12);

/// PyPI packages (pinned), with what needs them.
const PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "duckdb",
        "1.5.6",
        "reading the audit logs in the interoperability tests and the audit benchmark",
    ),
    (
        "pyarrow",
        "26.0.1",
        "reading the audit logs in the interoperability tests",
    ),
    (
        "pytz",
        "2026.6",
        "DuckDB's conversion of timestamps with a time zone to Python",
    ),
];

/// Tools built from crates.io: (crate, version, features, what needs it).
/// Versions are the newest that build on the stable toolchain this
/// workspace pins.
const CARGO_TOOLS: &[(&str, &str, &str, &str)] = &[
    (
        "s3s-fs",
        "0.14.1",
        "binary",
        "the S3-compatible server of the audit upload tests",
    ),
    (
        "cargo-deb",
        "3.8.0",
        "",
        "`cargo xtask package` and the package test",
    ),
];

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages(PACKAGES)?;
    python_packages(PYTHON_PACKAGES)?;
    for &(name, version, features, why) in CARGO_TOOLS {
        cargo_tool(name, version, features, why)?;
    }
    idp_packages()
}

/// `npm ci` in `tests/idp` unless `oidc-provider` is there: the OpenID
/// Provider the login tests and the gateway benchmark sign in at.
fn idp_packages() -> anyhow::Result<()> {
    let dir = crate::util::workspace_root().join("tests/idp");
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return Ok(());
    }
    if !succeeds(Command::new("node").arg("--version"))
        || !succeeds(Command::new("npm").arg("--version"))
    {
        debian_packages(NODE_PACKAGES)?;
    }
    let version = output(Command::new("node").arg("--version"))
        .context("Node.js (`node`) is missing: the test OpenID Provider runs on it")?;
    let (major, minor) = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .map(|n| n.parse::<u32>().ok())
        .collect::<Option<Vec<_>>>()
        .and_then(|v| Some((*v.first()?, *v.get(1)?)))
        .with_context(|| format!("cannot read the Node.js version from {version:?}"))?;
    if (major, minor) < NODE_MIN {
        bail!(
            "Node.js {} is too old for the test OpenID Provider (oidc-provider 9 needs {}.{} or \
             later): install a newer nodejs",
            version.trim(),
            NODE_MIN.0,
            NODE_MIN.1
        );
    }
    eprintln!("setup: installing the test OpenID Provider's npm packages (tests/idp)");
    exec(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
    .with_context(|| {
        format!(
            "`npm ci` in {} failed; the OpenID login tests need oidc-provider",
            dir.display()
        )
    })
}

/// `cargo install`s `name` at `version` unless it is there (both tools
/// print `<name> <version>` for `--version`).
fn cargo_tool(name: &str, version: &str, features: &str, why: &str) -> anyhow::Result<()> {
    let mut check = match name.strip_prefix("cargo-") {
        Some(subcommand) => {
            let mut cargo = Command::new("cargo");
            cargo.arg(subcommand);
            cargo
        }
        None => Command::new(name),
    };
    let installed =
        output(check.arg("--version")).is_ok_and(|v| v.trim() == format!("{name} {version}"));
    if installed {
        return Ok(());
    }
    eprintln!("setup: building {name} {version} ({why}; a few minutes, once)");
    let mut install = Command::new("cargo");
    install.args(["install", "--locked", "--version", version]);
    if !features.is_empty() {
        install.args(["--features", features]);
    }
    exec(install.arg(name)).with_context(|| format!("{name} could not be built; {why} needs it"))
}

/// Installs whichever of `packages` (name, version, what needs it) the
/// machine's `python3` cannot import at that version.
pub fn python_packages(packages: &[(&str, &str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<String> = packages
        .iter()
        .filter(|(name, version, _)| {
            let check = format!(
                "import importlib.metadata as m, sys; sys.exit(m.version('{name}') != '{version}')"
            );
            !succeeds(Command::new("python3").args(["-c", &check]))
        })
        .map(|(name, version, _)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let why: Vec<String> = packages
        .iter()
        .map(|(name, _, why)| format!("{name} ({why})"))
        .collect();
    eprintln!("setup: installing {}", missing.join(" "));
    exec(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing),
    )
    .with_context(|| format!("cannot install {}", why.join(", ")))
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly_rust_src() -> anyhow::Result<()> {
    if !succeeds(rustup().args(["run", "nightly", "rustc", "--version"])) {
        eprintln!("setup: installing the nightly toolchain (for the eBPF crate)");
        exec(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("the nightly toolchain is missing and could not be installed")?;
    }
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("setup: adding rust-src to nightly");
        exec(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("rust-src for nightly is missing and could not be installed")?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?.trim(),
    ))
}

/// The LLVM major version nightly's rustc was built with.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let info = output(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {version:?}"))
}

fn bpf_linker() -> anyhow::Result<()> {
    if succeeds(rustup().args(["run", "nightly", "bpf-linker", "--version"])) {
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    let lib_dir = nightly_sysroot()?.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| {
            format!(
                "nightly ships no libLLVM.so.{major}* in {}: cannot build bpf-linker against it",
                lib_dir.display()
            )
        })?;
    let prefix = llvm_prefix_dir(major)?;
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))?;
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)?;
    }
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), libllvm.display()))?;
    eprintln!("setup: building bpf-linker against nightly's LLVM {major} (a few minutes, once)");
    exec(
        rustup()
            .args([
                "run",
                "nightly",
                "cargo",
                "install",
                "--locked",
                "bpf-linker",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("bpf-linker could not be built; it is needed to build the XDP program")?;
    if !succeeds(rustup().args(["run", "nightly", "bpf-linker", "--version"])) {
        bail!("bpf-linker was installed but does not run under `rustup run nightly`");
    }
    Ok(())
}

fn llvm_prefix_dir(major: u32) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(format!(".cache/gateway-xtask/llvm-{major}")))
}

/// Installs whichever of `packages` (name, what needs it) are missing.
pub fn debian_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(name, _)| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
                .is_ok_and(|status| status.contains("install ok installed"))
        })
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let why: Vec<String> = packages
        .iter()
        .filter(|(name, _)| missing.contains(name))
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    crate::util::require_root(&format!("installing Debian packages: {}", why.join(", ")))?;
    eprintln!("setup: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install {}", why.join(", ")))
}
