//! Generated repos: a sharded safetensors checkpoint that looks like a small LLM, and files of
//! random bytes.

use std::collections::HashMap;

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

/// `len` pseudo-random bytes from `seed` (the same seed gives the same bytes).
pub fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

/// Bytes `range` of the content generated from `seed`: each byte depends only on the seed and
/// its offset, so any range is made without the rest (synthetic datasets of any size).
pub fn generated_bytes(seed: u64, range: std::ops::Range<u64>) -> Bytes {
    let mut out = Vec::with_capacity(range.end.saturating_sub(range.start) as usize);
    let mut block = range.start / 8;
    while (out.len() as u64) < range.end.saturating_sub(range.start) {
        // splitmix64 of (seed, block): 8 bytes per step.
        let mut z = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(block.wrapping_mul(0xBF58_476D_1CE4_E5B9));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        let first = if block == range.start / 8 {
            (range.start % 8) as usize
        } else {
            0
        };
        let want = (range.end - range.start) as usize - out.len();
        let take = (8 - first).min(want);
        out.extend_from_slice(&bytes[first..first + take]);
        block += 1;
    }
    Bytes::from(out)
}

/// A checkpoint of about `total_bytes`, in `shards` safetensors files with an index, plus
/// `config.json`, `tokenizer.json` and a README, as a model repo on the Hub holds them.
pub fn generate_model(total_bytes: u64, shards: usize, seed: u64) -> Vec<(String, Bytes)> {
    let shards = shards.max(1);
    let per_shard = (total_bytes / shards as u64).max(1024);
    let hidden = 256usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut layer = 0;
    let mut total = 0u64;
    for s in 0..shards {
        let name = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut bytes = 0u64;
        if s == 0 {
            // A few small and odd tensors: a scalar, an empty one, integer and half dtypes.
            tensors.push((
                "model.rope_theta".into(),
                Dtype::F32,
                vec![],
                10000f32.to_le_bytes().to_vec(),
            ));
            tensors.push(("model.empty".into(), Dtype::F16, vec![0, hidden], vec![]));
            let ids: Vec<u8> = (0..64i64).flat_map(|i| i.to_le_bytes()).collect();
            tensors.push(("model.position_ids".into(), Dtype::I64, vec![64], ids));
        }
        while bytes < per_shard {
            let rows =
                ((per_shard - bytes) / (hidden as u64 * 2)).clamp(1, 4 * hidden as u64) as usize;
            let mut data = vec![0u8; rows * hidden * 2];
            rng.fill_bytes(&mut data);
            // bf16 values in a sane range: clear the top exponent bits.
            for pair in data.chunks_exact_mut(2) {
                pair[1] &= 0xBF;
            }
            bytes += data.len() as u64;
            tensors.push((
                format!("model.layers.{layer}.mlp.weight"),
                Dtype::BF16,
                vec![rows, hidden],
                data,
            ));
            let norm: Vec<u8> = (0..hidden)
                .flat_map(|_| rng.random::<f32>().to_le_bytes())
                .collect();
            bytes += norm.len() as u64;
            tensors.push((
                format!("model.layers.{layer}.norm.weight"),
                Dtype::F32,
                vec![hidden],
                norm,
            ));
            layer += 1;
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .filter_map(|(n, d, shape, data)| {
                TensorView::new(*d, shape.clone(), data)
                    .ok()
                    .map(|v| (n.clone(), v))
            })
            .collect();
        for (n, _) in &views {
            weight_map.insert(n.clone(), json!(name));
        }
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let buf = safetensors::serialize(views, Some(meta)).unwrap_or_default();
        total += buf.len() as u64;
        files.push((name, Bytes::from(buf)));
    }
    let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    files.push((
        "model.safetensors.index.json".into(),
        Bytes::from(index.to_string()),
    ));
    let config = json!({
        "architectures": ["LocusDemoForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layer,
        "torch_dtype": "bfloat16",
    });
    files.push(("config.json".into(), Bytes::from(config.to_string())));
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..512).map(|i| (format!("tok{i}"), json!(i))).collect();
    files.push((
        "tokenizer.json".into(),
        Bytes::from(json!({ "model": { "type": "WordLevel", "vocab": vocab } }).to_string()),
    ));
    files.push((
        "README.md".into(),
        Bytes::from_static(b"# A generated model for locus\n"),
    ));
    files
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_parses_with_safetensors() {
        let files = super::generate_model(2 << 20, 2, 7);
        let shards: Vec<_> = files
            .iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .collect();
        assert_eq!(shards.len(), 2);
        let mut tensors = 0;
        for (_, b) in shards {
            let st = safetensors::SafeTensors::deserialize(b).unwrap();
            tensors += st.len();
        }
        assert!(tensors > 4);
        let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        assert!(total >= 2 << 20);
    }
}
