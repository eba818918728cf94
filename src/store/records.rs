//! How records and agents are written in the store, and read back: JSON, under the keys of
//! [`super`]. The engine hands its values over and gets them back; only this file knows the
//! format, including the probes that read a record's final outcome without building it. Never
//! decides anything about a record: it only encodes and decodes.

use crate::messages::parse_rfc3339;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Stored;

/// A record, agent or audit entry as the store keeps it.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored values serialize")
}

/// Reads back a record or agent the store kept; `what` names it in the error ("record R1").
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} cannot be read back: {e}"))
}

/// Whether a record as stored is final, read without building it (at start every stored record
/// is looked at, and most are final: their data need not be allocated).
pub fn stored_record_is_final(bytes: &[u8]) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct Probe {
        final_: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(bytes)
        .map(|p| p.final_.is_some())
        .map_err(|e| e.to_string())
}

/// When a record as stored became final (milliseconds since the epoch), if it is final.
pub fn stored_record_final_ms(bytes: &[u8]) -> Result<Option<u64>, String> {
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
pub fn parse_records<T: DeserializeOwned + Send>(
    stored: Vec<(String, Stored)>,
) -> Result<Vec<(String, T)>, String> {
    fn parse<T: DeserializeOwned>(part: &[(String, Stored)]) -> Result<Vec<T>, String> {
        part.iter()
            .map(|(id, bytes)| {
                serde_json::from_slice(bytes)
                    .map_err(|e| format!("record {id} cannot be read back: {e}"))
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
