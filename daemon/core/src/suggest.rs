//! "Did you mean": the names nearest to one a person typed, for error messages.

/// Up to `n` of `among` nearest to `typed` (by normalized Damerau-Levenshtein similarity,
/// best first), leaving out those too far to be a typo. Glob characters in `typed` are
/// ignored, and a path is compared by its last component when `typed` has no `/`.
pub fn nearest<'a>(
    typed: &str,
    among: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<&'a str> {
    let want: String = typed.chars().filter(|c| !"*?[]{}".contains(*c)).collect();
    let mut scored: Vec<(f64, &str)> = among
        .into_iter()
        .map(|name| {
            let part = match want.contains('/') {
                true => name,
                false => name.rsplit('/').next().unwrap_or(name),
            };
            (strsim::normalized_damerau_levenshtein(&want, part), name)
        })
        .filter(|(score, _)| *score >= 0.4)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_names_come_first_and_far_ones_not_at_all() {
        let names = [
            "model.safetensors",
            "config.json",
            "sub/tokenizer.json",
            "README.md",
        ];
        assert_eq!(
            nearest("*.safetensor", names, 3),
            vec!["model.safetensors"],
            "globs are ignored"
        );
        assert_eq!(
            nearest("tokeniser.json", names, 1),
            vec!["sub/tokenizer.json"]
        );
        assert_eq!(
            nearest("cache-siz", ["cache-size", "cache-dir", "listen"], 2)[0],
            "cache-size"
        );
        assert!(nearest("zzzzzzzz", names, 3).is_empty());
    }
}
