//! `--config FILE` and `--check-config`, through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Client, TicketdProcess};
use ticketd_proto::Status;

const BIN: &str = env!("CARGO_BIN_EXE_ticketd");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `ticketd ARGS --check-config`: exit code, stdout, stderr.
fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_node_sells_what_its_config_file_says_and_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "ticketd.toml",
        "# a sale under version control\nevent = [\"1:5\", \"2:3:2\"]\nfsync = \"off\"\nshards = 1\n",
    );
    let file = file.display().to_string();
    let node = TicketdProcess::spawn(&["--config".into(), file.clone()]);
    let mut client = Client::connect(node.addr);
    assert_eq!(client.stock(1), (5, 5));
    assert_eq!(
        client.buy(2, 9, 2).status,
        Status::Ok,
        "limit 2 from the file"
    );
    node.kill9();

    // `--event` on the command line replaces every event of the file.
    let node = TicketdProcess::spawn(&["--config".into(), file, "--event".into(), "3:1".into()]);
    let mut client = Client::connect(node.addr);
    assert_eq!(client.buy(1, 1, 1).status, Status::NotFound);
    assert_eq!(client.stock(3), (1, 1));
    node.kill9();
}

#[test]
fn check_config_prints_every_setting_as_a_file_that_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "ticketd.toml",
        "listen = \"127.0.0.1:7999\"\nevent = [\"1:100\"]\nnode_id = 7\nhold-ttl = \"2m\"\n\
         share-port = true\nidle-timeout = \"5m\"\nadmin = \"off\"\n",
    );
    let file = file.display().to_string();
    let (code, printed, stderr) = check(&["--config", &file, "--node-id", "9"]);
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "listen = \"127.0.0.1:7999\"\n",
        "event = [\"1:100:1\"]\n",
        "node-id = 9\n",
        "hold-ttl = \"2m\"\n",
        "share-port = true\n",
        "idle-timeout = \"5m\"\n",
        "header-timeout = \"10s\"\n",
        "admin = \"off\"\n",
        "fsync = \"always\"\n",
        "# http: not set\n",
    ] {
        assert!(printed.contains(line), "{line:?} in\n{printed}");
    }
    let again = write(dir.path(), "effective.toml", &printed);
    let (code, reprinted, stderr) = check(&["--config", &again.display().to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        reprinted, printed,
        "the printed configuration is a config file"
    );
}

#[test]
fn bad_config_files_are_refused_with_exit_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("lisen = \"127.0.0.1:1\"\n", "unknown setting `lisen`"),
        ("config = \"other.toml\"\n", "unknown setting `config`"),
        (
            "listen = [\"a:1\", \"b:2\"]\n",
            "`listen` takes one value, not a list",
        ),
        ("share-port = \"yes\"\n", "`share-port` is a switch"),
        (
            "listen = { host = \"x\" }\n",
            "`listen` takes a string or a number",
        ),
        ("listen = [\n", "not valid TOML"),
        ("shards = 0\n", "--shards"),
        (
            "event = [\"1:x\"]\n",
            "--config file's settings are read as the flags",
        ),
    ] {
        let file = write(dir.path(), "bad.toml", text);
        let (code, _, stderr) = check(&["--config", &file.display().to_string()]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.contains(needle), "{text}: {needle:?} in {stderr}");
    }
    let (code, _, stderr) = check(&["--config", "/nonexistent/ticketd.toml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/ticketd.toml"), "{stderr}");
}
