//! How records, agents and audit entries are written in the store and read back: format 1
//! (binary, see [`super::format`]) for everything written now, JSON for what older servers wrote.
//! The engine hands its values over and gets them back; only this file and `format` know the
//! encoding, including the probes that read a record's final outcome without building it. Never
//! decides anything about a record: it only encodes and decodes.

use super::format::{self, Persist, Reader, VERSION_1};
use crate::messages::parse_rfc3339;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::Stored;

/// A record, agent or audit entry as the store keeps it (format 1).
pub fn encode<T: Persist>(value: &T) -> Vec<u8> {
    format::encode(value)
}

/// Reads back a record, agent or audit entry the store kept, in either format; `what` names it
/// in the error ("record R1").
pub fn decode<T: Persist + DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    format::decode(bytes).map_err(|e| format!("{what} cannot be read back: {e}"))
}

/// The second byte of a format-1 record holds these flags: the record is final (its final
/// outcome follows)...
pub const RECORD_FINAL: u8 = 1;
/// ...and its value holds only what changes (final outcome, context, version, holders), its body
/// (call, campaign, phone, data, chain: written once, when the record is attached) being kept under
/// its own key. Such a value is read back with its body appended ([`join_record`]). Without this
/// flag the value holds the whole record, as servers before the split wrote it.
pub const RECORD_SPLIT: u8 = 2;

/// The flags byte of a format-1 record, checked.
fn record_flags(bytes: &[u8]) -> Result<u8, String> {
    match bytes.get(1) {
        Some(&f) if f & !(RECORD_FINAL | RECORD_SPLIT) == 0 => Ok(f),
        _ => Err("a record whose flags byte is damaged".into()),
    }
}

/// A format-1 record starts with its version byte, then its flags, then its final outcome if the
/// record is final.
fn binary_final(bytes: &[u8]) -> Option<Reader<'_>> {
    match bytes {
        [VERSION_1, f, ..] if f & RECORD_FINAL != 0 => Some(Reader::new(&bytes[2..])),
        _ => None,
    }
}

/// Whether a record's stored value holds only its state, its body being kept apart.
pub fn stored_record_is_split(bytes: &[u8]) -> bool {
    bytes.first() == Some(&VERSION_1) && record_flags(bytes).is_ok_and(|f| f & RECORD_SPLIT != 0)
}

/// A record as read back from its stored state and its stored body: the one value the engine
/// decodes.
pub fn join_record(state: &[u8], body: &[u8]) -> Stored {
    let mut whole = Vec::with_capacity(state.len() + body.len());
    whole.extend_from_slice(state);
    whole.extend_from_slice(body);
    Stored::from(whole)
}

/// Whether a record as stored is final, read without building it.
pub fn stored_record_is_final(bytes: &[u8]) -> Result<bool, String> {
    match bytes.first() {
        Some(&VERSION_1) => record_flags(bytes).map(|f| f & RECORD_FINAL != 0),
        _ => {
            #[derive(Deserialize)]
            struct Probe {
                final_: Option<serde::de::IgnoredAny>,
            }
            serde_json::from_slice::<Probe>(bytes)
                .map(|p| p.final_.is_some())
                .map_err(|e| e.to_string())
        }
    }
}

/// When a record as stored became final (milliseconds since the epoch), if it is final.
pub fn stored_record_final_ms(bytes: &[u8]) -> Result<Option<u64>, String> {
    if bytes.first() == Some(&VERSION_1) {
        let Some(mut r) = binary_final(bytes) else {
            return Ok(None);
        };
        format::get_outcome(&mut r)?;
        r.opt_string()?;
        return Ok(parse_rfc3339(r.str()?));
    }
    #[derive(Deserialize)]
    struct At {
        at: String,
    }
    #[derive(Deserialize)]
    struct Probe {
        final_: Option<At>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(probe.final_.and_then(|f| parse_rfc3339(&f.at)))
}

/// Parses stored records on every core: at start this is most of the work for a big store.
/// The records come back in the order given, each with its id.
pub fn parse_records<T: Persist + DeserializeOwned + Send>(
    stored: Vec<(String, Stored)>,
) -> Result<Vec<(String, T)>, String> {
    fn parse<T: Persist + DeserializeOwned>(part: &[(String, Stored)]) -> Result<Vec<T>, String> {
        part.iter()
            .map(|(id, bytes)| {
                format::decode(bytes).map_err(|e| format!("record {id} cannot be read back: {e}"))
            })
            .collect()
    }
    // Below this, threads cost more than they save.
    const PER_THREAD: usize = 20_000;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(stored.len() / PER_THREAD)
        .max(1);
    let parsed: Vec<Vec<T>> = if threads == 1 {
        vec![parse(&stored)?]
    } else {
        let chunk = stored.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = stored
                .chunks(chunk)
                .map(|part| scope.spawn(move || parse(part)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<_>, String>>()
        })?
    };
    Ok(stored
        .into_iter()
        .map(|(id, _)| id)
        .zip(parsed.into_iter().flatten())
        .collect())
}
