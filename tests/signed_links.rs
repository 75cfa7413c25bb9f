//! Signed purchase links on the HTTP front (`--http-secret`), over real sockets: a link
//! from `ticketd sign` buys once; a tampered user, event, expiry or signature, an expired
//! link, or none at all gets 403 and sells nothing.

mod common;

use std::io::Write;

use common::{event, http_get, ticketd_tool, TicketdProcess};
use ticketd::signed_links::LinkSigner;

const SECRET: &str = "a-test-secret-of-32-bytes-length\n";

fn secret_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(SECRET.as_bytes()).expect("write");
    file
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn only_good_unexpired_links_buy() {
    let secret = secret_file();
    let server = common::start_with(&[event(1, 10, 1), event(2, 10, 1)], |c| {
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.http_links = Some(LinkSigner::load(secret.path()).expect("secret"));
    });
    let http = server.http_addr().expect("http");
    // A link as the site issues it (the tool is the reference).
    let link = ticketd_tool(&[
        "sign",
        "--http-secret",
        &secret.path().display().to_string(),
        "--event",
        "1",
        "--user",
        "42",
    ])
    .expect("ticketd sign");
    let link = link.trim();
    let (code, body) = http_get(http, link);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"code\":1"), "{body}");
    // Within its expiry a retry is safe: the per-user limit answers it.
    let (code, body) = http_get(http, link);
    assert_eq!((code, body.contains("\"code\":-2")), (200, true), "{body}");

    let signer = LinkSigner::load(secret.path()).expect("secret");
    let good = signer.link(1, 7, now() + 300);
    let tampered = [
        good.replace("user=7", "user=8"),
        good.replace("event=1", "event=2"),
        good.replace(
            &format!("expires={}", now() + 300),
            &format!("expires={}", now() + 3000),
        ),
        {
            let (head, sig) = good.split_at(good.len() - 64);
            let flipped = if sig.starts_with('0') { "1" } else { "0" };
            format!("{head}{flipped}{}", &sig[1..])
        },
    ];
    for link in &tampered {
        let (code, body) = http_get(http, link);
        assert_eq!(code, 403, "{link}: {body}");
        assert!(body.contains("signature does not match"), "{body}");
    }
    let expired = signer.link(1, 9, now().saturating_sub(1));
    let (code, body) = http_get(http, &expired);
    assert_eq!(code, 403);
    assert!(body.contains("expired"), "{body}");
    for bare in ["/buy/ticket?event=1&user=11", "/buy/ticket"] {
        let (code, body) = http_get(http, bare);
        assert_eq!(code, 403, "{bare}: {body}");
        assert!(body.contains("signed link is required"), "{body}");
    }
    let (code, _) = http_get(http, "/buy/ticket?event=1&user=1&expires=1&sig=xyz");
    assert_eq!(code, 400, "a malformed sig is a bad query");
    assert_eq!(
        server.stock(1),
        Some((10, 9)),
        "only the one good link sold"
    );
    assert_eq!(server.stock(2), Some((10, 10)));
    // The untouched good link still buys.
    assert_eq!(http_get(http, &good).0, 200);
}

#[test]
fn the_secret_flag_is_checked_at_start() {
    let secret = secret_file();
    let path = secret.path().display().to_string();
    let refused = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        TicketdProcess::try_spawn(&args).err().expect("refused")
    };
    let why = refused(&["--http-secret", &path]);
    assert!(
        why.contains("--http-secret signs links for the HTTP front: it needs --http"),
        "{why}"
    );
    let why = refused(&[
        "--http",
        "127.0.0.1:0",
        "--http-anonymous",
        "--http-secret",
        &path,
    ]);
    assert!(
        why.contains("--http-anonymous cannot be combined with --http-secret"),
        "{why}"
    );
    let mut short = tempfile::NamedTempFile::new().expect("temp file");
    short.write_all(b"short").expect("write");
    let why = refused(&[
        "--http",
        "127.0.0.1:0",
        "--http-secret",
        &short.path().display().to_string(),
    ]);
    assert!(why.contains("is 5 bytes; use at least 16"), "{why}");
    // Tokens on the binary port and signed links on HTTP together: a secure node.
    let mut tokens = tempfile::NamedTempFile::new().expect("temp file");
    tokens.write_all(b"gateway-token\n").expect("write");
    let node = TicketdProcess::spawn(&[
        "--http".into(),
        "127.0.0.1:0".into(),
        "--http-secret".into(),
        path,
        "--auth-token-file".into(),
        tokens.path().display().to_string(),
    ]);
    node.terminate();
}
