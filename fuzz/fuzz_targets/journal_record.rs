//! Fuzz target: see `ticketd::fuzz_checks::check_journal_record_body` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ticketd::fuzz_checks::check_journal_record_body(data);
});
