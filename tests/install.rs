//! `make install`'s script, staged under a temporary DESTDIR: the binaries, a systemd
//! unit that systemd's own checker accepts, and a config file the installed binary
//! reads — and that a second install keeps.

mod common;

use std::path::Path;
use std::process::Command;

use common::cluster::loadgen;
use common::{Client, TicketdProcess};
use ticketd_proto::Status;

fn install(stage: &Path) -> String {
    let bin = loadgen().parent().unwrap().to_path_buf();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .arg("--bin")
        .arg(&bin)
        .arg("--destdir")
        .arg(stage)
        .output()
        .expect("install.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn install_stages_binaries_a_valid_unit_and_a_config_it_keeps() {
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    install(root);
    for program in ["ticketd", "loadgen"] {
        assert!(
            root.join("usr/local/bin").join(program).is_file(),
            "{program}"
        );
    }
    let unit_path = root.join("etc/systemd/system/ticketd.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/ticketd --config /etc/ticketd/ticketd.toml\n",
        "ExecStartPre=/usr/local/bin/ticketd --config /etc/ticketd/ticketd.toml --check-config\n",
        "Restart=on-failure\n",
        "LimitNOFILE=1048576\n",
        "StateDirectory=ticketd\n",
        "KillSignal=SIGTERM\n",
    ] {
        assert!(unit.contains(line), "{line:?} in\n{unit}");
    }

    // systemd's checker, on a copy whose paths point into the stage (it checks that
    // the programs exist): no unknown keys, no bad values.
    let staged_bin = root.join("usr/local/bin").display().to_string();
    let staged_etc = root.join("etc/ticketd").display().to_string();
    let copy = root.join("verify-ticketd.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin", &staged_bin)
            .replace("/etc/ticketd", &staged_etc),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs (make test installs Debian's systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    assert!(
        !complaints.contains("verify-ticketd.service"),
        "{complaints}"
    );

    // ticketd starts on the installed config (its address and data dir moved aside by
    // flags, which override the file) and sells the shipped event.
    let config = root.join("etc/ticketd/ticketd.toml");
    let data = tempfile::tempdir().unwrap();
    let node = TicketdProcess::spawn(&[
        "--config".into(),
        config.display().to_string(),
        "--data-dir".into(),
        data.path().display().to_string(),
    ]);
    let mut client = Client::connect(node.addr);
    assert_eq!(client.stock(1), (10_000, 10_000), "the shipped event");
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
    node.kill9();

    // A second install keeps the operator's edits.
    std::fs::write(&config, "event = [\"7:70\"]\n").unwrap();
    let said = install(root);
    assert!(said.contains("kept"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "event = [\"7:70\"]\n"
    );
}
