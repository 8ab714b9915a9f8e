//! `headstart demo`.

use std::path::PathBuf;

use clap::Args;
use headstart::demo::{DemoConfig, format_report, run as run_demo};

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for head.safetensors (created if missing).
    #[arg(long, default_value = "headstart-demo")]
    out: PathBuf,
    /// Producer threads streaming each task.
    #[arg(long, default_value_t = 3)]
    producers: usize,
    /// Seed of the projection, split, class order and random rows.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = DemoConfig {
        producers: args.producers,
        seed: args.seed,
        ..DemoConfig::default()
    };
    outln!(
        "headstart demo: UCI digits (1797 real images, CC BY 4.0) → seeded random ReLU features (d = {}),\n\
         5 tasks of 2 classes streamed by {} producer threads; nc head, λ = {} (relative to tr(G/N)/d).\n\
         At each switch the layer keeps its old rows and adds rows for the new classes, started as:\n\
         calibrated LS: LS rows from all statistics, scaled to fit the layer on {} rows of the new task;\n\
         LS: the same rows unscaled; random: nn.Linear's init (10 draws).\n\
         Loss: cross-entropy over every seen class on the rest of the new task's training rows.\n",
        config.dim,
        config.producers,
        config.lambda,
        config.calibration
    )?;
    let report = run_demo(&config, Some(&args.out))?;
    out!("{}", format_report(&report))?;
    let head_path = args.out.join("head.safetensors");
    outln!(
        "\nwrote {} ({} classes × {} features) in {:.2} s",
        head_path.display(),
        report.head.rows(),
        report.head.dim,
        report.seconds
    )?;
    Ok(())
}
