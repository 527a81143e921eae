//! What may leave a node: URLs that may carry credentials are kept to the node that was given
//! them, and written anywhere (logs, errors, status) without the parts that carry them.
//!
//! A query string of an `http(s)://` URL may be a signature (S3 or GCS presigned URLs, the
//! Hub's CDN redirects, CDN tokens): such a URL is [`private`], fetched only by the node it was
//! given to, and [`redact_urls`] writes it as `…?<redacted>`. User info (`user:password@`) is
//! written as `<redacted>@`.

use std::borrow::Cow;

/// Whether `uri` names an `http(s)://` URL with a query string: it may carry a credential,
/// so it never goes to a peer.
pub fn private(uri: &str) -> bool {
    (uri.starts_with("http://") || uri.starts_with("https://")) && uri.contains('?')
}

/// `text` with every `http://` and `https://` URL in it stripped of user info and query
/// string. Text without a URL comes back borrowed.
pub fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("http://") && !text.contains("https://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_scheme(rest) {
        out.push_str(&rest[..start]);
        let url = &rest[start..];
        // To the end of the token: a query may hold `,` `)` `]` `}` unencoded, and all of it
        // goes; only what cannot be in a URL ends it.
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(url.len());
        out.push_str(&redact_one(&url[..end]));
        rest = &url[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn find_scheme(s: &str) -> Option<usize> {
    match (s.find("http://"), s.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => format!("{}?<redacted>", &tail[..q]),
        None => tail.to_string(),
    };
    format!("{scheme}://{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_queries_and_user_info_only() {
        let t =
            "GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA failed; \
                 endpoint \"https://u:pw@mirror.example/api\", see http://h/x. \
                 (https://h/y?a=1,2)&s=SIG) <https://h/z?k=[x]}sig=SIG2>";
        let r = redact_urls(t);
        assert!(
            !r.contains("SIG") && r.contains("(https://h/y?<redacted>"),
            "{r}"
        );
        assert!(
            !r.contains("abc") && !r.contains("AKIA") && !r.contains("pw"),
            "{r}"
        );
        assert!(
            r.contains("https://b.s3.amazonaws.com/k?<redacted> failed"),
            "{r}"
        );
        assert!(
            r.contains("\"https://<redacted>@mirror.example/api\""),
            "{r}"
        );
        assert!(r.contains("http://h/x."), "{r}");
        assert!(matches!(redact_urls("hf://a/b no url"), Cow::Borrowed(_)));
        assert!(private("https://h/x?sig=1") && !private("https://h/x") && !private("hf://a/b"));
    }
}
