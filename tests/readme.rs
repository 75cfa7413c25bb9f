//! The README's raw-TCP Python client, run as written against a live server: the first
//! run buys, the second is refused by the per-user limit.

mod common;

use std::process::Command;

use common::{event, start};

fn readme_python() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("```python\n")
        .expect("README has a python block")
        + 10;
    let end = start + readme[start..].find("```").expect("closed block");
    readme[start..end].to_string()
}

#[test]
fn the_readme_python_client_buys_a_ticket() {
    if Command::new("python3").arg("--version").output().is_err() {
        panic!("python3 is needed for this test (make deps installs the toolchain it needs)");
    }
    let server = start(&[event(1, 10_000, 1)], 2);
    let script = readme_python().replace("7878", &server.local_addr().port().to_string());
    let run = || {
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.starts_with("req 1: OK order 0x"), "{first}");
    let order = first.trim().trim_start_matches("req 1: OK order ");
    assert_eq!(
        run().trim(),
        format!("req 1: LIMIT_REACHED\nreq 2: OK user 42 has order {order} (1 ticket)")
    );
    let summary = server.shutdown();
    assert_eq!(summary.event(1).unwrap().sold, 1);
}
