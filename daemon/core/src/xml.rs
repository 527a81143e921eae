//! Text in XML (S3's answers, from the gateway and the test origin).

/// `s` escaped for XML text or an attribute. Control characters XML 1.0 cannot hold are
/// written as character references (S3 clients that need them ask for `encoding-type=url`).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str(&format!("&#{};", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(
            super::escape("a&b<c>\"'\u{1}\t"),
            "a&amp;b&lt;c&gt;&quot;&apos;&#1;\t"
        );
    }
}
