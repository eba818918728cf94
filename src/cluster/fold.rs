//! The encoding of a batch too big for one etcd transaction, committed whole as the fold key:
//! for each key, its length (4 bytes, big-endian) and bytes, then 0 for a deletion or 1 and the
//! value's length and bytes.

use crate::store::RawOp;

pub(crate) fn encode(ops: &[RawOp]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in ops {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

pub(crate) fn decode(mut bytes: &[u8]) -> Result<Vec<RawOp>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err("the fold key is cut short".into());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn len(bytes: &mut &[u8]) -> Result<usize, String> {
        let b: [u8; 4] = take(bytes, 4)?.try_into().expect("4 bytes");
        Ok(u32::from_be_bytes(b) as usize)
    }
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let n = len(&mut bytes)?;
        let key = take(&mut bytes, n)?.to_vec();
        let value = match take(&mut bytes, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut bytes)?;
                Some(take(&mut bytes, n)?.to_vec())
            }
            t => return Err(format!("the fold key has an unknown tag {t}")),
        };
        ops.push((key, value));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_comes_back_as_it_was_encoded() {
        let ops: Vec<RawOp> = vec![
            (b"r/R1".to_vec(), Some(br#"{"v":1}"#.to_vec())),
            (b"a/A".to_vec(), None),
            (vec![b'l', b'/', 0, 0, 0, 0, 0, 0, 1, 0], Some(Vec::new())),
        ];
        assert_eq!(decode(&encode(&ops)).unwrap(), ops);
        assert!(decode(&encode(&ops)[..7]).is_err());
    }
}
