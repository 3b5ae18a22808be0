//! URLs of provider requests: percent-encoded path segments and query pairs under a
//! base URL, and the same URL with its `access_token` masked for logs.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::domain::{BackendError, ErrorKind};

/// Everything except RFC 3986's unreserved characters (`A-Za-z0-9-._~`).
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What replaces a token wherever it could show.
pub(super) const REDACTED: &str = "[redacted]";

/// Percent-encodes a path segment or a query key/value: `@` → `%40`, `/` → `%2F`,
/// `?` → `%3F`, `%` → `%25`, and so on for everything outside the unreserved set.
pub fn encode(raw: &str) -> String {
    utf8_percent_encode(raw, NOT_UNRESERVED).to_string()
}

/// `base` (without its trailing `/`) followed by each of `segments` percent-encoded, then
/// `query`. A segment that is empty, `.` or `..` is refused, because URL parsers resolve
/// those (even percent-encoded) as navigation instead of sending them.
pub fn endpoint(
    base: &str,
    segments: &[&str],
    query: &[(&str, &str)],
) -> Result<String, BackendError> {
    let mut url = base.trim_end_matches('/').to_owned();
    for segment in segments {
        if matches!(*segment, "" | "." | "..") {
            return Err(BackendError::new(
                ErrorKind::InvalidCommand,
                format!("{segment:?} cannot be used as a URL path segment"),
            ));
        }
        url.push('/');
        url.push_str(&encode(segment));
    }
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&encode(key));
        url.push('=');
        url.push_str(&encode(value));
    }
    Ok(url)
}

/// `url` with the value of any `access_token` query parameter replaced, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((path, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("access_token", _)) => format!("access_token={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_escapes_everything_outside_unreserved() {
        assert_eq!(encode("120363@g.us"), "120363%40g.us");
        assert_eq!(encode("a/b?c%d"), "a%2Fb%3Fc%25d");
        assert_eq!(encode("../../etc"), "..%2F..%2Fetc");
        assert_eq!(encode("a b&c=d#e+f:g"), "a%20b%26c%3Dd%23e%2Bf%3Ag");
        assert_eq!(encode("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn endpoint_appends_encoded_segments_and_query_to_the_trimmed_base() {
        let url = endpoint(
            "http://h:1/base/",
            &["api", "s@1", "groups", "1@g.us"],
            &[("groupJid", "1@g.us"), ("x", "a&b=c")],
        )
        .unwrap();
        assert_eq!(
            url,
            "http://h:1/base/api/s%401/groups/1%40g.us?groupJid=1%40g.us&x=a%26b%3Dc"
        );
    }

    #[test]
    fn endpoint_refuses_dot_and_empty_segments() {
        for bad in ["..", ".", ""] {
            let e = endpoint("http://h", &["api", bad, "groups"], &[]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidCommand, "{bad:?}");
        }
        assert!(endpoint("http://h", &["..."], &[]).is_ok());
    }

    #[test]
    fn encoded_segments_cannot_escape_their_place_in_the_path() {
        let url = endpoint("http://h/base", &["a/../../b?x=%2e"], &[]).unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(parsed.path(), "/base/a%2F..%2F..%2Fb%3Fx%3D%252e");
        assert_eq!(parsed.query(), None);
    }

    #[test]
    fn redact_url_hides_only_the_access_token() {
        assert_eq!(
            redact_url("http://h/v2/x?instance_id=s1&access_token=t0k%40&id=1"),
            "http://h/v2/x?instance_id=s1&access_token=[redacted]&id=1"
        );
        assert_eq!(redact_url("http://h/v2/x"), "http://h/v2/x");
    }
}
