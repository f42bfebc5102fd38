//! `squire verify`: read every file of a collection and check it against
//! the checksums in its manifest (opening for search checks sizes only).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

/// Check every file of a collection against its manifest's checksums.
///
/// Opening a collection for search checks file sizes only and maps the
/// vectors without reading them; this reads every byte. Exit status 1 when
/// a file is missing or differs, naming it and the images it holds.
#[derive(Args)]
pub struct VerifyArgs {
    /// Collection directory.
    #[arg(long)]
    index: PathBuf,
    /// Print JSON (`squire.verify/1`: ok, files, bytes, seconds, problems).
    #[arg(long)]
    json: bool,
}

/// Runs `squire verify`.
pub fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let bar = super::progress_bar(a.json);
    bar.set_message("verify");
    let t0 = Instant::now();
    let report = squire_indexer::verify(&a.index, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "schema": "squire.verify/1", "index": a.index.display().to_string(), "ok": report.problems.is_empty(),
                "generation": report.generation, "files": report.files, "bytes": report.bytes, "seconds": secs, "problems": report.problems,
            }))?
        );
    } else {
        for p in &report.problems {
            println!("{}: {} — holds {}", p.path.display(), p.problem, p.holds);
        }
        println!(
            "{} files, {:.1} MB of generation {} read in {secs:.2} s: {}",
            report.files,
            report.bytes as f64 / 1e6,
            report.generation,
            if report.problems.is_empty() {
                "all match the manifest".to_string()
            } else {
                format!("{} damaged", report.problems.len())
            }
        );
    }
    if !report.problems.is_empty() {
        anyhow::bail!(
            "{}: {} file(s) missing or damaged",
            a.index.display(),
            report.problems.len()
        );
    }
    Ok(())
}
