//! `cargo xtask`: orchestration only (set-up, tests, demo). The build itself
//! is plain cargo: userspace's build.rs builds the eBPF programs.

mod bench;
mod bench_packets;
mod demo;
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
    /// datapath's per-packet cost (`--only control|packets` for one part).
    Bench(bench::Options),
    /// (internal) `bench` from the release build.
    #[command(hide = true)]
    BenchRelease(bench::Options),
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

fn test(args: &[String]) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    gangplank_tests::check_privileges()?;
    gangplank_tests::sweep_stale()?;
    // End-to-end tests build whole clusters; two cores run about four at a
    // time comfortably.
    run(cargo().args(["test", "--"]).args(args).env(
        "RUST_TEST_THREADS",
        std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| "4".into()),
    ))
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
            demo::run()
        }
        Cmd::Bench(opts) => {
            setup::setup()?;
            // Benchmarks measure the optimised build: run the bench from a
            // release xtask so that it finds the release agent next to it.
            run(cargo().args(["build", "--release", "--bins"]))?;
            run(cargo()
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "--package",
                    "xtask",
                    "--",
                    "bench-release",
                ])
                .args(opts.to_args()))
        }
        Cmd::BenchRelease(opts) => bench::run(opts),
    }
}
