use std::path::PathBuf;
use std::process::ExitCode;

pub use policy::ResolveOptions;

/// `tollgate policy check PATH...`.
pub fn check(paths: &[PathBuf]) -> ExitCode {
    let report = policy::load_paths(paths);
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    if report.has_errors() {
        let n = report.errors().count();
        eprintln!(
            "{n} error{} found; nothing from an invalid file would be applied",
            plural(n)
        );
        return ExitCode::from(1);
    }
    let n = report.policies.len();
    println!("ok: {n} polic{} valid", if n == 1 { "y" } else { "ies" });
    ExitCode::SUCCESS
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
