//! `lmtrain` command line: the arguments (`args`), one function per command (`commands`), and
//! the end of every command here — its output written once through [`crate::output`], its
//! error printed once per job, its exit code, and the end of MPI.
//!
//! Exit codes: 0 success, 1 error (printed as `error:` with a `Caused by:` chain), 2 usage error,
//! 128 + the signal's number for a run stopped by SIGINT (130), SIGTERM (143) or SIGUSR1 (138)
//! after writing its checkpoint.

mod args;
mod commands;

use crate::{output, train};
use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// Parses the command line, runs the command, prints, exits.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = String::new();
    let result = run(cli, &mut out);
    // Output is written once, at the end, through the one writer: a reader that closed the pipe
    // early (`lmtrain runs | head -1`) is not an error, and a run's summary reaches its log.
    output::out_raw(&out);
    let (code, failed_alone) = exit_code(result);
    output::detach_log();
    // A rank that failed alone ends the whole job (the others wait for it in a collective);
    // otherwise MPI is finalized here, after everything was printed.
    crate::dist::end_job(failed_alone && crate::dist::in_parallel_job());
    code
}

/// Prints a failed command's error (once per job) and maps the outcome to the exit status;
/// true when this process failed alone (an error the other ranks of a job did not agree on).
fn exit_code(result: anyhow::Result<()>) -> (ExitCode, bool) {
    let Err(e) = result else {
        return (ExitCode::SUCCESS, false);
    };
    if let Some(stop) = e.downcast_ref::<train::signals::Interrupted>() {
        if crate::dist::is_root_process() {
            output::err(&stop.to_string()); // once per job: rank 0 wrote the checkpoint
        }
        return (ExitCode::from(stop.signal.exit_code()), false);
    }
    if let Some(stop) = e.downcast_ref::<crate::sweep::SweepStopped>() {
        output::err(&stop.to_string());
        return (ExitCode::from(stop.signal.exit_code()), false);
    }
    if e.downcast_ref::<crate::dist::Reported>().is_some() {
        return (ExitCode::FAILURE, false); // every rank printed it already
    }
    let mut text = format!("{}error: {e}", crate::dist::process_tag());
    for cause in e.chain().skip(1) {
        text.push_str(&format!("\n  Caused by: {cause}"));
    }
    output::err(&text);
    (ExitCode::FAILURE, true)
}

/// Runs one command; what it prints on stdout goes to `out`.
fn run(cli: Cli, out: &mut String) -> anyhow::Result<()> {
    let parallel = matches!(cli.command, Command::Train(_) | Command::Bench(_));
    if let Some(launch) = crate::dist::detect_launch().filter(|l| l.size > 1 && !parallel) {
        anyhow::bail!(
            "{} started {} processes, but only `lmtrain train` and `lmtrain bench` run data-parallel: run this command as one process",
            launch.launcher,
            launch.size
        );
    }
    // A bad LMTRAIN_SIMD is refused before any kernel runs (they would take the CPU's best).
    crate::kernels::cpu::simd::requested().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Prepare(a) => commands::prepare(a, out),
        Command::Train(a) => commands::train_cmd(a, out),
        Command::Eval(a) => commands::eval_cmd(a, out),
        Command::Sample(a) => commands::sample_cmd(a, out),
        Command::Export(a) => commands::export_cmd(a, out),
        Command::Plan(a) => commands::plan_cmd(a, out),
        Command::Baseline(a) => commands::baseline_cmd(a, out),
        Command::Plot(a) => commands::plot(a, out),
        Command::Runs(a) => commands::runs(a, out),
        Command::Sweep(a) => commands::sweep(a, out),
        Command::Serve(a) => crate::serve::run(&crate::serve::ServeOptions {
            dir: a.dir,
            host: a.host,
            port: a.port,
        }),
        Command::Bench(a) => commands::bench(a, out),
    }
}
