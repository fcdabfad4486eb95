//! Compiles the eBPF programs in bpf/ with clang. A missing clang or libbpf
//! header is a build error that names the Debian packages to install.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: [&str; 2] = ["from_pod", "to_pod"];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=bpf");
    if Command::new(&clang).arg("--version").output().is_err() {
        panic!(
            "\n\ntollgate-egress-bpf: `{clang}` was not found. The eBPF programs are C compiled by clang;\n\
             install it with: apt-get install clang libbpf-dev   (or set CLANG=/path/to/clang)\n\n"
        );
    }
    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("\n\ntollgate-egress-bpf: /usr/include/bpf/bpf_helpers.h is missing; install it with: apt-get install libbpf-dev\n\n");
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for program in PROGRAMS {
        let src = format!("bpf/{program}.bpf.c");
        let obj = out.join(format!("{program}.bpf.o"));
        let output = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| panic!("running {clang}: {e}"));
        if !output.status.success() {
            panic!(
                "\n\ncompiling {src} failed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
