//! The fuzz targets' checks (`ticketd::fuzz_checks`) in every `cargo test`: over the
//! corpus in `fuzz/corpus/` (the protocol vectors, and whatever `make fuzz` found worth
//! keeping) and over random inputs built from real frames. `make fuzz` runs the same
//! checks coverage-guided.

use std::path::Path;

use proptest::prelude::*;
use ticketd::fuzz_checks::{
    check_binary_stream, check_http_parser, check_journal_record_body, check_request_decoder,
};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("entry").path()).expect("readable"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

#[test]
fn the_corpus_passes_every_check() {
    for input in corpus("request_decoder") {
        check_request_decoder(&input);
    }
    for input in corpus("binary_stream") {
        check_binary_stream(&input);
    }
    for input in corpus("http_parser") {
        check_http_parser(&input);
    }
    let journal = corpus("journal_record");
    assert!(journal.len() >= 4, "the journal_record seeds are missing");
    for input in &journal {
        check_journal_record_body(input);
    }
    // The seed run is one the decoder takes (so the check above compared records), and
    // every one-byte change of it is taken or refused without a panic.
    let run = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/journal_record/seed-run-of-three"),
    )
    .expect("the run seed");
    let sales = ticketd::journal::record::Record::decode(&run).map(Iterator::count);
    assert_eq!(sales, Ok(3));
    for at in 0..run.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut changed = run.clone();
            changed[at] ^= flip;
            check_journal_record_body(&changed);
        }
    }
}

/// Streams made of real frames (from the corpus) with bytes flipped, cut or inserted.
fn mangled_stream() -> impl Strategy<Value = Vec<u8>> {
    let frames = corpus("request_decoder");
    (
        proptest::collection::vec(0..frames.len(), 1..12),
        proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
        any::<u8>(),
    )
        .prop_map(move |(picks, flips, seed)| {
            let mut stream = vec![seed];
            for i in picks {
                stream.extend_from_slice(&frames[i]);
            }
            for (at, byte) in flips {
                let at = 1 + usize::from(at) % (stream.len() - 1).max(1);
                if let Some(b) = stream.get_mut(at) {
                    *b ^= byte;
                }
            }
            stream
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mangled_streams_keep_every_invariant(stream in mangled_stream()) {
        check_request_decoder(&stream[1..]);
        check_binary_stream(&stream);
    }

    #[test]
    fn arbitrary_bytes_never_break_the_parsers(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_request_decoder(&data);
        check_binary_stream(&data);
        check_http_parser(&data);
    }
}
