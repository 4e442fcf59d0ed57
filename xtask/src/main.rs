//! `cargo xtask`: orchestration only (set-up, tests, demo). The build itself
//! is plain cargo: userspace's build.rs builds the eBPF programs.

#[cfg(feature = "harness")]
mod bench;
#[cfg(feature = "harness")]
mod bench_api;
#[cfg(feature = "harness")]
mod bench_ingress;
mod bench_options;
#[cfg(feature = "harness")]
mod demo;
mod image;
mod setup;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "gangplank's set-up, test and demo runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Set up, then build everything (debug).
    Build,
    /// Set up, build, then run every test: formatting, clippy, unit tests
    /// and the root-only end-to-end tests in network namespaces.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the simulated-cluster demo with a report.
    Demo,
    /// Set up, build (release), and measure the agent at scale and the
    /// datapath's per-packet cost (`--only control|packets` for one part);
    /// `bench ingress`: gangplank-ingress against nginx and haproxy.
    Bench(bench_options::Options),
    /// Set up, then build the OCI image (Containerfile) with buildah:
    /// static `gangplank` and `gangplank-ingress` on an empty base; check
    /// it and write target/image/gangplank-<version>.oci.tar.
    Image {
        /// Remove the image from buildah's storage afterwards (keep only
        /// the archive).
        #[arg(long)]
        remove: bool,
    },
    /// (internal) `bench` from the release build, with the harness.
    #[command(hide = true)]
    BenchRelease(bench_options::Options),
    /// (internal) the demo, with the harness.
    #[command(hide = true)]
    DemoRun,
    /// (internal) checks and clean-up before the end-to-end tests, with the
    /// harness.
    #[command(hide = true)]
    PreTest,
}

pub fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Run a command to completion, failing with its command line.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root_dir());
    cmd
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--all-targets"]))
}

/// Run a hidden xtask command in an xtask built with the harness (after
/// set-up, so that it can be built).
fn with_harness(release: bool, args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--package", "xtask", "--features", "harness", "--"])
        .args(args);
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    run(cargo().args([
        "clippy",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    with_harness(false, &["pre-test".into()])?;
    // End-to-end tests build whole clusters; two cores run about four at a
    // time comfortably.
    run(cargo().args(["test", "--"]).args(args).env(
        "RUST_TEST_THREADS",
        std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| "4".into()),
    ))?;
    // The image is built and checked (files, static binaries, `--version`
    // from the mounted image) on a full run, not for a filtered one.
    if args.is_empty() {
        image::image(&image::Options { keep: false })?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            build()
        }
        Cmd::Test { args } => {
            setup::setup()?;
            build()?;
            test(&args)
        }
        Cmd::Demo => {
            setup::setup()?;
            build()?;
            with_harness(false, &["demo-run".into()])
        }
        Cmd::Bench(opts) => {
            setup::setup()?;
            if opts.selected() == Some(bench_options::Part::Ingress) {
                setup::install_ingress_bench_packages()?;
            }
            // Benchmarks measure the optimised build: run the bench from a
            // release xtask so that it finds the release agent next to it.
            run(cargo().args(["build", "--release", "--bins"]))?;
            let mut args = vec!["bench-release".to_string()];
            args.extend(opts.to_args());
            with_harness(true, &args)
        }
        Cmd::Image { remove } => {
            setup::setup()?;
            image::image(&image::Options { keep: !remove }).map(|_| ())
        }
        Cmd::BenchRelease(opts) => harness::bench(opts),
        Cmd::DemoRun => harness::demo(),
        Cmd::PreTest => harness::pre_test(),
    }
}

/// What needs the simulated-cluster harness; without the `harness` feature
/// these say how they are meant to be run.
#[cfg(feature = "harness")]
mod harness {
    use anyhow::Result;

    pub fn bench(opts: crate::bench_options::Options) -> Result<()> {
        crate::bench::run(opts)
    }

    pub fn demo() -> Result<()> {
        crate::demo::run()
    }

    pub fn pre_test() -> Result<()> {
        gangplank_tests::check_privileges()?;
        gangplank_tests::sweep_stale()
    }
}

#[cfg(not(feature = "harness"))]
mod harness {
    use anyhow::{bail, Result};

    fn needs_harness() -> Result<()> {
        bail!("internal command: run it through `cargo xtask` (it needs --features harness)")
    }

    pub fn bench(_: crate::bench_options::Options) -> Result<()> {
        needs_harness()
    }

    pub fn demo() -> Result<()> {
        needs_harness()
    }

    pub fn pre_test() -> Result<()> {
        needs_harness()
    }
}
