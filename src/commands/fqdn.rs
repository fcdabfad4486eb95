use std::process::ExitCode;

use policy::FqdnSelector;

/// `tollgate fqdn match PATTERN NAME`.
pub fn matches(pattern: &str, name: &str) -> ExitCode {
    let selector = match FqdnSelector::pattern(pattern) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: matchPattern {pattern:?} {e}");
            return ExitCode::from(2);
        }
    };
    if selector.matches(name) {
        println!("{name} matches {pattern}");
        ExitCode::SUCCESS
    } else {
        println!("{name} does not match {pattern}");
        ExitCode::from(1)
    }
}
