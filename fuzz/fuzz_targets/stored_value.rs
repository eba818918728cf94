//! The readers of what the store keeps, on arbitrary bytes: a damaged disk must give an error,
//! never a panic, and never a value other than the one written.
//!
//! Input: the stored value itself. Checked: decoding it as an audit entry, as a record (through
//! `Engine::admit`, which a request naming a final record runs), as an agent-free audit block, and
//! the probes that read a record's final outcome from its first bytes, never panic; an audit entry
//! that decodes from format 1 is written back out and reads as itself; an audit block's header
//! count agrees with the entries read from it, and those entries make the same block again.
#![no_main]

use baton::config::Config;
use baton::engine::{Engine, EngineConfig};
use baton::messages::AuditEntry;
use baton::store::format::{decode, encode, VERSION_1};
use baton::store::fuzzing::{audit_block, audit_count, audit_entries};
use baton::store::records::{stored_record_final_ms, stored_record_is_final};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode::<AuditEntry>(data) {
        if data.first() == Some(&VERSION_1) {
            let again = encode(&entry);
            assert_eq!(decode::<AuditEntry>(&again).ok(), Some(entry), "entry round trip");
        }
    }

    let final_ = stored_record_is_final(data);
    let _ = stored_record_final_ms(data);
    let mut engine = Engine::new(EngineConfig::from_config(&Config::default()), [7; 32], 1_000);
    if engine.admit("R", data).is_ok() && final_ == Ok(false) {
        panic!("a live record was admitted as final");
    }

    let first = 1000;
    if let Ok(entries) = audit_entries(first, data) {
        let count = audit_count(first, data).expect("a block that reads has a count");
        assert_eq!(count as usize, entries.len(), "block count and entries");
        for (i, (seq, _)) in entries.iter().enumerate() {
            assert_eq!(*seq, first + i as u64, "seqs of a block are consecutive");
        }
        if data.first() == Some(&0xB1) && !entries.is_empty() && entries.len() <= 1024 {
            let blocks = audit_block(&entries);
            assert_eq!(blocks.len(), 1);
            assert_eq!(
                audit_entries(first, &blocks[0].1).ok(),
                Some(entries),
                "block round trip"
            );
        }
    }
});
