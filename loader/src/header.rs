//! The header parser: the official `safetensors` crate's validation, turned into plain data.

use std::collections::HashMap;

use crate::TensorInfo;

/// A validated safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the data section in the file (8 + the header's length).
    pub data_start: usize,
    /// `__metadata__`, if any.
    pub metadata: Option<HashMap<String, String>>,
    /// Tensors in file order, with absolute byte ranges.
    pub tensors: Vec<(String, TensorInfo)>,
}

/// Parses and validates the header of a whole safetensors file held in `buf`. Never panics;
/// any input that breaks a rule of the format gets an error saying which.
pub fn parse_header(buf: &[u8]) -> Result<Header, String> {
    use safetensors::SafeTensorError as E;
    let (n, meta) = safetensors::SafeTensors::read_metadata(buf).map_err(|e| match e {
        E::HeaderTooSmall => "file shorter than the 8-byte header length".to_string(),
        E::HeaderTooLarge => {
            "header length exceeds the format's 100,000,000-byte limit".to_string()
        }
        E::InvalidHeaderLength => format!(
            "header length points past the end of the file ({} bytes)",
            buf.len()
        ),
        E::MetadataIncompleteBuffer => {
            "file size does not match the tensors' offsets (truncated, or bytes left over)"
                .to_string()
        }
        E::InvalidHeaderDeserialization(err) => format!("header is not valid: {err}"),
        E::InvalidHeader(err) => format!("header is not UTF-8: {err}"),
        E::InvalidOffset(name) => {
            format!("tensor {name:?}: data offsets are out of order, overlapping or leave a gap")
        }
        E::TensorInvalidInfo => {
            "a tensor's byte length is not its dtype size times its element count".to_string()
        }
        other => other.to_string(),
    })?;
    let data_start = 8 + n;
    let mut tensors: Vec<(String, TensorInfo)> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (b, e) = info.data_offsets;
            (
                name,
                TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: data_start + b..data_start + e,
                },
            )
        })
        .collect();
    tensors.sort_by_key(|(_, t)| (t.range.start, t.range.end));
    Ok(Header {
        data_start,
        metadata: meta.metadata().clone(),
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn accepts_valid_and_refuses_each_broken_rule() {
        let ok =
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#;
        let h = parse_header(&file(ok, 8)).unwrap();
        assert_eq!(h.tensors[0].1.range, h.data_start..h.data_start + 8);
        assert_eq!(h.metadata.unwrap()["k"], "v");
        let cases: &[(&[u8], &str)] = &[
            (b"\x01\x02", "shorter"),
            (&file(ok, 4), "does not match"),
            (&file(ok, 12), "does not match"),
            (
                &file(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    8,
                ),
                "dtype size",
            ),
            (
                &file(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                    4,
                ),
                "offsets",
            ),
            (
                &file(
                    r#"{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}"#,
                    4,
                ),
                "not valid",
            ),
            (&file("not json", 0), "not valid"),
        ];
        for (bytes, needle) in cases {
            let e = parse_header(bytes).unwrap_err();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        let mut huge = (u64::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse_header(&huge).is_err());
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(parse_header(&past).unwrap_err().contains("past the end"));
    }
}
